"""Frozen value types of the ledger."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from msgspec import Struct

# On the wire too: one definition, in the contract the clients share.
from stocksync_contract.messages import ReservationLine, ReservationStatus, Shortage

PositionKey = tuple[str, str]  # (location_id, sku)
EventKey = tuple[str, str]  # (location_id, event_id): an event's identity (rule 10)
ReservationKey = tuple[str, str]  # (location_id, reservation_id): a reservation's identity, like an event's
OutcomeKind = Literal["applied", "duplicate", "rejected"]


def available(on_hand: int, reserved: int, safety_stock: int) -> int:
    """Rule 1: what may still be promised."""
    return max(0, on_hand - reserved - safety_stock)


class Location(Struct, frozen=True, kw_only=True):
    location_id: str
    kind: Literal["store", "warehouse", "online"]
    name: str
    pickup_enabled: bool = False
    lat: float | None = None
    lon: float | None = None


class Position(Struct, frozen=True, kw_only=True):
    location_id: str
    sku: str
    on_hand: int = 0
    reserved: int = 0
    damaged: int = 0
    safety_stock: int = 0
    version: int = 0
    last_count_at: datetime | None = None

    @property
    def key(self) -> PositionKey:
        return (self.location_id, self.sku)

    @property
    def available(self) -> int:
        return available(self.on_hand, self.reserved, self.safety_stock)


class Movement(Struct, frozen=True, kw_only=True):
    event_id: str
    type: str
    location_id: str
    sku: str
    occurred_at: datetime
    on_hand_delta: int = 0
    reserved_delta: int = 0
    damaged_delta: int = 0
    reason: str | None = None
    superseded_by_count: bool = False
    reservation_id: str | None = None


class Reservation(Struct, frozen=True, kw_only=True):
    reservation_id: str
    location_id: str
    channel: str
    status: ReservationStatus
    lines: tuple[ReservationLine, ...]
    created_at: datetime
    expires_at: datetime
    event_id: str
    reference: str | None = None

    @property
    def key(self) -> ReservationKey:
        return (self.location_id, self.reservation_id)


class Alert(Struct, frozen=True, kw_only=True):
    kind: Literal["negative_stock", "reservation_at_risk"]
    location_id: str
    sku: str
    on_hand: int
    reserved: int
    event_id: str
    reservation_ids: tuple[str, ...] = ()


class Outcome(Struct, frozen=True, kw_only=True):
    """What became of one event; a repeat delivery is answered from the recorded one."""

    event_id: str
    type: str
    location_id: str
    outcome: OutcomeKind
    recorded_at: datetime
    error: str | None = None
    detail: str | None = None
    reservation_id: str | None = None
    shortages: tuple[Shortage, ...] = ()


class RecordedEvent(Struct, frozen=True, kw_only=True):
    """A processed event as stored: its body hash (for conflicts) and its first outcome."""

    body_hash: bytes
    outcome: Outcome


class OrderReturns(Struct, frozen=True, kw_only=True):
    """What an online order shipped and what of it has come back, per sku: how much a return may name."""

    order_id: str
    status: str
    shipped: Mapping[str, int]
    returned: Mapping[str, int]
