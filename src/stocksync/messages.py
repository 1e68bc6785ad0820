"""Outbound message bodies (spec section 3): one msgspec Struct per contract, shared by NATS and HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct, structs

from stocksync.domain.channels import ChannelStock, LocationAvailable
from stocksync.domain.model import Alert, Outcome, Position, Reservation, ReservationLine, Shortage
from stocksync.domain.orders import Order


class PositionBody(Struct, frozen=True, kw_only=True):
    location_id: str
    sku: str
    on_hand: int
    reserved: int
    damaged: int
    safety_stock: int
    available: int
    version: int

    @classmethod
    def of(cls, position: Position) -> PositionBody:
        return cls(
            location_id=position.location_id,
            sku=position.sku,
            on_hand=position.on_hand,
            reserved=position.reserved,
            damaged=position.damaged,
            safety_stock=position.safety_stock,
            available=position.available,
            version=position.version,
        )


class AvailabilityMessage(PositionBody, frozen=True, kw_only=True):
    """``stocksync.out.availability.<location_id>.<sku>`` and the KV bucket value."""

    as_of: datetime

    @classmethod
    def of(cls, position: Position, as_of: datetime) -> AvailabilityMessage:  # type: ignore[override]
        return cls(**structs.asdict(PositionBody.of(position)), as_of=as_of)


class ReservationMessage(Struct, frozen=True, kw_only=True):
    """``stocksync.out.reservation.<reservation_id>``."""

    reservation_id: str
    location_id: str
    status: Literal["held", "rejected", "collected", "cancelled", "expired"]
    lines: tuple[ReservationLine, ...]
    expires_at: datetime | None
    shortages: tuple[Shortage, ...]
    event_id: str


class AlertMessage(Struct, frozen=True, kw_only=True):
    """``stocksync.out.alert.<location_id>``."""

    kind: Literal["negative_stock", "reservation_at_risk"]
    location_id: str
    sku: str
    on_hand: int
    reserved: int
    reservation_ids: tuple[str, ...]
    event_id: str

    @classmethod
    def of(cls, alert: Alert) -> AlertMessage:
        return cls(
            kind=alert.kind,
            location_id=alert.location_id,
            sku=alert.sku,
            on_hand=alert.on_hand,
            reserved=alert.reserved,
            reservation_ids=alert.reservation_ids,
            event_id=alert.event_id,
        )


class OutcomeMessage(Struct, frozen=True, kw_only=True):
    """``stocksync.out.outcome.<location_id>`` and ``GET /v1/events/{event_id}``."""

    event_id: str
    type: str
    outcome: Literal["applied", "duplicate", "rejected"]
    error: str | None
    recorded_at: datetime

    @classmethod
    def of(cls, outcome: Outcome) -> OutcomeMessage:
        return cls(
            event_id=outcome.event_id,
            type=outcome.type,
            outcome=outcome.outcome,
            error=outcome.error,
            recorded_at=outcome.recorded_at,
        )


class ReservationBody(Struct, frozen=True, kw_only=True):
    """A reservation as HTTP answers it."""

    reservation_id: str
    location_id: str
    channel: Literal["ecommerce", "staff"]
    status: Literal["held", "collected", "cancelled", "expired"]
    lines: tuple[ReservationLine, ...]
    reference: str | None
    created_at: datetime
    expires_at: datetime
    shortages: tuple[Shortage, ...] = ()

    @classmethod
    def of(cls, reservation: Reservation) -> ReservationBody:
        return cls(
            reservation_id=reservation.reservation_id,
            location_id=reservation.location_id,
            channel=reservation.channel,
            status=reservation.status,
            lines=reservation.lines,
            reference=reservation.reference,
            created_at=reservation.created_at,
            expires_at=reservation.expires_at,
        )


class ChannelAvailabilityBody(Struct, frozen=True, kw_only=True):
    """A sku as a channel sees it (``GET /v1/channels/{id}/availability``): its sellable total, and what each
    of its locations has available, in priority order."""

    channel_id: str
    sku: str
    available: int
    locations: tuple[LocationAvailable, ...]

    @classmethod
    def of(cls, stock: ChannelStock) -> ChannelAvailabilityBody:
        return cls(
            channel_id=stock.channel_id, sku=stock.sku, available=stock.available, locations=stock.locations
        )


class ChannelAvailabilityMessage(Struct, frozen=True, kw_only=True):
    """``stocksync.out.channel.<channel_id>.<sku>`` and the channel bucket's value: what the channel may sell.
    ``version`` increases with every change of the entry; ``as_of`` is when the relay made it. What each
    location adds is left out (``GET /v1/channels/{id}/availability`` has it): a web shop needs the total, and
    a channel of twenty locations would make every message twenty times larger."""

    channel_id: str
    sku: str
    available: int
    version: int
    as_of: datetime


class AllocationBody(Struct, frozen=True, kw_only=True):
    location_id: str
    reservation_id: str
    lines: tuple[ReservationLine, ...]


class OrderBody(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An online order as HTTP answers it and ``stocksync.out.order.<order_id>`` publishes it."""

    order_id: str
    channel_id: str
    status: Literal["allocated", "shipped", "cancelled", "expired", "rejected"]
    lines: tuple[ReservationLine, ...]
    allocations: tuple[AllocationBody, ...]
    reference: str | None
    created_at: datetime
    expires_at: datetime
    shortages: tuple[Shortage, ...] = ()
    error: str | None = None  # on NATS, why a placement, shipping or cancelling was refused

    @classmethod
    def of(cls, order: Order, error: str | None = None) -> OrderBody:
        return cls(
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
