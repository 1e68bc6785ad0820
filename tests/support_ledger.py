"""Builders for ledger events, and an in-memory stand-in for the database between Ledger transactions.

Tests read as the business rule: ``sale(STORE, {"SKU-1": 2}, at=5)`` is a sale of two units of SKU-1 at
STORE five minutes after ``T0``. Event ids are unique unless given.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from msgspec import structs

from stocksync.domain.events import (
    Adjust,
    AdjustLine,
    Cancel,
    Collect,
    Command,
    Count,
    CountLine,
    Expire,
    QtyLine,
    Receipt,
    Reserve,
    Return,
    ReturnLine,
    Sale,
    SetSafetyStock,
    encode,
)
from stocksync.domain.ledger import Ledger
from stocksync.domain.model import (
    EventKey,
    Location,
    Outcome,
    Position,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

Lines = Mapping[str, int] | Sequence[tuple[str, int]]
When = float | datetime


def unique(prefix: str) -> str:
    """An id no other test uses (integration tests share one database)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def at(when: When) -> datetime:
    """``T0`` plus ``when`` minutes, or ``when`` itself when it is a datetime."""
    return when if isinstance(when, datetime) else T0 + timedelta(minutes=when)


def _pairs(lines: Lines) -> list[tuple[str, int]]:
    return list(lines.items()) if isinstance(lines, Mapping) else list(lines)


def _common(kind: str, location_id: str, when: When, event_id: str | None, reference: str | None) -> dict:
    return {
        "event_id": event_id or unique(kind),
        "location_id": location_id,
        "occurred_at": at(when),
        "reference": reference,
    }


def store(location_id: str, **fields) -> Location:
    return Location(location_id=location_id, kind=fields.pop("kind", "store"), name=location_id, **fields)


def sale(
    location_id: str, lines: Lines, *, at: When = 0, event_id: str | None = None, reference: str | None = None
) -> Sale:
    return Sale(
        **_common("sale", location_id, at, event_id, reference),
        lines=[QtyLine(sku=sku, qty=qty) for sku, qty in _pairs(lines)],
    )


def receipt(
    location_id: str, lines: Lines, *, at: When = 0, event_id: str | None = None, reference: str | None = None
) -> Receipt:
    return Receipt(
        **_common("receipt", location_id, at, event_id, reference),
        lines=[QtyLine(sku=sku, qty=qty) for sku, qty in _pairs(lines)],
    )


def return_(
    location_id: str,
    lines: Lines,
    *,
    disposition: Literal["restock", "damaged"] = "restock",
    at: When = 0,
    event_id: str | None = None,
    reference: str | None = None,
    order_id: str | None = None,
) -> Return:
    return Return(
        **_common("return", location_id, at, event_id, reference),
        lines=[ReturnLine(sku=sku, qty=qty, disposition=disposition) for sku, qty in _pairs(lines)],
        order_id=order_id,
    )


def adjust(
    location_id: str,
    lines: Lines,
    *,
    reason: str = "correction",
    at: When = 0,
    event_id: str | None = None,
    reference: str | None = None,
) -> Adjust:
    return Adjust(
        **_common("adjust", location_id, at, event_id, reference),
        lines=[AdjustLine(sku=sku, delta=delta, reason=reason) for sku, delta in _pairs(lines)],  # type: ignore[arg-type]
    )


def count(
    location_id: str, lines: Lines, *, at: When = 0, event_id: str | None = None, reference: str | None = None
) -> Count:
    return Count(
        **_common("count", location_id, at, event_id, reference),
        lines=[CountLine(sku=sku, counted=counted) for sku, counted in _pairs(lines)],
    )


def reserve(
    location_id: str,
    lines: Lines,
    *,
    reservation_id: str | None = None,
    ttl_seconds: int = 7200,
    channel: Literal["ecommerce", "staff"] = "ecommerce",
    at: When = 0,
    event_id: str | None = None,
    reference: str | None = None,
) -> Reserve:
    return Reserve(
        **_common("reserve", location_id, at, event_id, reference),
        reservation_id=reservation_id or unique("res"),
        channel=channel,
        ttl_seconds=ttl_seconds,
        lines=[QtyLine(sku=sku, qty=qty) for sku, qty in _pairs(lines)],
    )


def collect(location_id: str, reservation_id: str, *, at: When = 0, event_id: str | None = None) -> Collect:
    return Collect(**_common("collect", location_id, at, event_id, None), reservation_id=reservation_id)


def cancel(location_id: str, reservation_id: str, *, at: When = 0, event_id: str | None = None) -> Cancel:
    return Cancel(**_common("cancel", location_id, at, event_id, None), reservation_id=reservation_id)


def expire(location_id: str, reservation_id: str, *, at: When = 0, event_id: str | None = None) -> Expire:
    return Expire(**_common("expire", location_id, at, event_id, None), reservation_id=reservation_id)


def safety_stock(
    location_id: str, sku: str, qty: int, *, at: When = 0, event_id: str | None = None
) -> SetSafetyStock:
    return SetSafetyStock(**_common("safety", location_id, at, event_id, None), sku=sku, qty=qty)


def other_body(event: Command) -> Command:
    """The same event_id with a different body (a conflicting re-use of the id)."""
    return structs.replace(event, reference=f"{event.reference or ''}-changed")


def key(event: Command) -> EventKey:
    """What identifies an event (rule 10): its location and its id."""
    return (event.location_id, event.event_id)


def hash_of(event: Command) -> bytes:
    """The body hash the service computes (sha256 of the canonical encoding)."""
    return hashlib.sha256(encode(event)).digest()


def apply(ledger: Ledger, *events: Command) -> list[Outcome]:
    """Apply events in order with their real body hashes."""
    return [ledger.apply(event, hash_of(event)) for event in events]


def new_ledger(*location_ids: str, now: When = 0, positions: Iterable[Position] = (), **state) -> Ledger:
    return Ledger(
        now=at(now),
        locations={location_id: store(location_id) for location_id in location_ids},
        positions={p.key: p for p in positions},
        **state,
    )


def position_numbers(position: Position) -> dict[str, int]:
    """The numbers a reader sees, for comparing positions across backends."""
    return {
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "damaged": position.damaged,
        "safety_stock": position.safety_stock,
        "available": position.available,
        "version": position.version,
    }


def numbers(
    on_hand: int, *, available: int, version: int, reserved: int = 0, damaged: int = 0, safety_stock: int = 0
) -> dict[str, int]:
    """An expected position, as `position_numbers` gives it."""
    return {
        "on_hand": on_hand,
        "reserved": reserved,
        "damaged": damaged,
        "safety_stock": safety_stock,
        "available": available,
        "version": version,
    }
