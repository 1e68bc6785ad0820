"""Turns a batch's record of changes into outbox rows: the messages published once its transaction commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from stocksync.domain.channels import Channel, channel_total
from stocksync.domain.events import INBOUND_TYPES
from stocksync.domain.ledger import Changes
from stocksync.domain.model import Outcome, Position, PositionKey
from stocksync.domain.orders import Order
from stocksync.messages import (
    ChannelAvailabilityMessage,
    ReservationMessage,
    alert_message,
    availability_message,
    order_body,
    outcome_message,
)
from stocksync.wire import (
    alert_msg_id,
    alert_subject,
    availability_key,
    availability_msg_id,
    availability_subject,
    channel_key,
    channel_msg_id,
    channel_subject,
    order_msg_id,
    order_subject,
    outcome_msg_id,
    outcome_subject,
    reservation_msg_id,
    reservation_subject,
)

_encode = msgspec.json.encode


def outbox_rows(changes: Changes) -> list[dict]:
    """Availability per changed position (its final version), reservation changes, alerts and outcomes.

    A message id that names an event names its location too: an event is both (rule 10), and JetStream
    would drop one store's message as a duplicate of another store's under the same event id.
    """
    rows = []
    for position in changes.positions:
        key = position.key
        rows.append(
            _row(
                availability_subject(*key),
                availability_msg_id(*key, position.version),
                availability_message(position, changes.now),
                kv_key=availability_key(*key),
                version=position.version,
            )
        )
    rows.extend(_reservation_row(changes, o) for o in changes.outcomes if o.reservation_id)
    rows.extend(
        _row(
            alert_subject(a.location_id),
            alert_msg_id(a.location_id, a.event_id, a.sku, a.kind, a.on_hand),
            alert_message(a),
        )
        for a in changes.alerts
    )
    rows.extend(
        _row(
            outcome_subject(o.location_id),
            outcome_msg_id(o.location_id, o.event_id, o.outcome),
            outcome_message(o),
        )
        for o in changes.outcomes
        if o.type in INBOUND_TYPES  # internal commands (expiry, safety stock) have no channel waiting
    )
    return rows


def _reservation_row(changes: Changes, outcome: Outcome) -> dict:
    """The reservation as this event left it; a reserve refused for want of stock is published ``rejected``.

    A refused reserve naming a reservation that exists (a conflict) publishes that reservation's real state.
    """
    assert outcome.reservation_id is not None
    reservation = changes.reservations.get((outcome.location_id, outcome.reservation_id))
    if reservation is None:
        body = ReservationMessage(
            reservation_id=outcome.reservation_id,
            location_id=outcome.location_id,
            status="rejected",
            lines=(),
            expires_at=None,
            shortages=outcome.shortages,
            event_id=outcome.event_id,
        )
    else:
        body = ReservationMessage(
            reservation_id=reservation.reservation_id,
            location_id=reservation.location_id,
            status=reservation.status,
            lines=reservation.lines,
            expires_at=reservation.expires_at,
            shortages=(),
            event_id=outcome.event_id,
        )
    msg_id = reservation_msg_id(outcome.location_id, outcome.event_id, outcome.outcome)
    return _row(reservation_subject(outcome.reservation_id), msg_id, body)


def _row(
    subject: str, msg_id: str, body: msgspec.Struct, *, kv_key: str | None = None, version: int | None = None
) -> dict:
    return {
        "subject": subject,
        "msg_id": msg_id,
        "payload": _encode(body),
        "kv_key": kv_key,
        "version": version,
    }


class Publication(msgspec.Struct, frozen=True, kw_only=True):
    """A message the relay publishes that no outbox row holds: a channel's sku, computed in the pass."""

    subject: str
    msg_id: str
    payload: bytes
    kv_key: str
    version: int
    available: int  # what the entry says the channel may sell: an unchanged one need not be sent again


def channel_publications(
    version: int,
    touched: Sequence[tuple[Channel, str]],
    positions: dict[PositionKey, Position],
    as_of: datetime,
) -> list[Publication]:
    """What each (channel, sku) a relay pass touched may sell now, under the pass's one version."""
    return [
        _channel_publication(channel, sku, channel_total(channel, sku, positions), version, as_of)
        for channel, sku in touched
    ]


def _channel_publication(
    channel: Channel, sku: str, available: int, version: int, as_of: datetime
) -> Publication:
    body = ChannelAvailabilityMessage(
        channel_id=channel.channel_id, sku=sku, available=available, version=version, as_of=as_of
    )
    return Publication(
        subject=channel_subject(channel.channel_id, sku),
        msg_id=channel_msg_id(channel.channel_id, sku, version),
        payload=_encode(body),
        kv_key=channel_key(channel.channel_id, sku),
        version=version,
        available=available,
    )


def order_row(order: Order) -> dict:
    """The order as a change left it, on ``stocksync.out.order.<order_id>`` (one message per status)."""
    msg_id = order_msg_id(order.order_id, order.status)
    return _row(order_subject(order.order_id), msg_id, order_body(order))
