"""Outbound message bodies (spec section 3), built from the ledger's records.

The Structs are the wire contract's (`stocksync_contract.messages`, one definition shared with the clients,
re-exported here); what turns a position, a reservation or an order into one is the server's, here.
"""

from __future__ import annotations

from datetime import datetime

from msgspec import structs

from stocksync.domain.channels import ChannelStock
from stocksync.domain.model import Alert, Outcome, Position, Reservation
from stocksync.domain.orders import Order
from stocksync_contract.messages import (
    AlertMessage,
    AllocationBody,
    AvailabilityMessage,
    ChannelAvailabilityBody,
    ChannelAvailabilityMessage,
    OrderBody,
    OutcomeMessage,
    PositionBody,
    ReservationBody,
    ReservationMessage,
)

__all__ = [
    "AlertMessage",
    "AllocationBody",
    "AvailabilityMessage",
    "ChannelAvailabilityBody",
    "ChannelAvailabilityMessage",
    "OrderBody",
    "OutcomeMessage",
    "PositionBody",
    "ReservationBody",
    "ReservationMessage",
    "alert_message",
    "availability_message",
    "channel_availability_body",
    "order_body",
    "outcome_message",
    "position_body",
    "reservation_body",
]


def position_body(position: Position) -> PositionBody:
    return PositionBody(
        location_id=position.location_id,
        sku=position.sku,
        on_hand=position.on_hand,
        reserved=position.reserved,
        damaged=position.damaged,
        safety_stock=position.safety_stock,
        available=position.available,
        version=position.version,
    )


def availability_message(position: Position, as_of: datetime) -> AvailabilityMessage:
    return AvailabilityMessage(**structs.asdict(position_body(position)), as_of=as_of)


def alert_message(alert: Alert) -> AlertMessage:
    return AlertMessage(
        kind=alert.kind,
        location_id=alert.location_id,
        sku=alert.sku,
        on_hand=alert.on_hand,
        reserved=alert.reserved,
        reservation_ids=alert.reservation_ids,
        event_id=alert.event_id,
    )


def outcome_message(outcome: Outcome) -> OutcomeMessage:
    return OutcomeMessage(
        event_id=outcome.event_id,
        type=outcome.type,
        outcome=outcome.outcome,
        error=outcome.error,
        recorded_at=outcome.recorded_at,
    )


def reservation_body(reservation: Reservation) -> ReservationBody:
    return ReservationBody(
        reservation_id=reservation.reservation_id,
        location_id=reservation.location_id,
        channel=reservation.channel,
        status=reservation.status,
        lines=reservation.lines,
        reference=reservation.reference,
        created_at=reservation.created_at,
        expires_at=reservation.expires_at,
    )


def channel_availability_body(stock: ChannelStock) -> ChannelAvailabilityBody:
    return ChannelAvailabilityBody(
        channel_id=stock.channel_id, sku=stock.sku, available=stock.available, locations=stock.locations
    )


def order_body(order: Order, error: str | None = None) -> OrderBody:
    return OrderBody(
        order_id=order.order_id,
        channel_id=order.channel_id,
        status=order.status,
        lines=order.lines,
        allocations=tuple(
            AllocationBody(location_id=a.location_id, reservation_id=order.order_id, lines=a.lines)
            for a in order.allocations
        ),
        reference=order.reference,
        created_at=order.created_at,
        expires_at=order.expires_at,
        shortages=order.shortages,
        error=error or ("insufficient_stock" if order.status == "rejected" else None),
    )
