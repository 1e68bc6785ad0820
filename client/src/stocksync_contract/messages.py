"""Outbound message bodies (spec section 3): one msgspec Struct per contract, shared by NATS and HTTP.

The server builds them from its ledger records (`stocksync.messages`); a client decodes them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct

ReservationStatus = Literal["held", "collected", "cancelled", "expired"]


class ReservationLine(Struct, frozen=True, kw_only=True):
    sku: str
    qty: int


class Shortage(Struct, frozen=True, kw_only=True):
    sku: str
    requested: int
    available: int


class LocationAvailable(Struct, frozen=True, kw_only=True):
    location_id: str
    available: int


class PickupLine(Struct, frozen=True, kw_only=True):
    sku: str
    available: int


class PickupStore(Struct, frozen=True, kw_only=True):
    location_id: str
    name: str
    distance_km: float | None
    lines: tuple[PickupLine, ...]


class PositionBody(Struct, frozen=True, kw_only=True):
    location_id: str
    sku: str
    on_hand: int
    reserved: int
    damaged: int
    safety_stock: int
    available: int
    version: int


class AvailabilityMessage(PositionBody, frozen=True, kw_only=True):
    """``stocksync.out.availability.<location_id>.<sku>`` and the KV bucket value."""

    as_of: datetime


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


class OutcomeMessage(Struct, frozen=True, kw_only=True):
    """``stocksync.out.outcome.<location_id>`` and ``GET /v1/events/{event_id}``."""

    event_id: str
    type: str
    outcome: Literal["applied", "duplicate", "rejected"]
    error: str | None
    recorded_at: datetime


class ReservationBody(Struct, frozen=True, kw_only=True):
    """A reservation as HTTP answers it."""

    reservation_id: str
    location_id: str
    channel: Literal["ecommerce", "staff"]
    status: ReservationStatus
    lines: tuple[ReservationLine, ...]
    reference: str | None
    created_at: datetime
    expires_at: datetime
    shortages: tuple[Shortage, ...] = ()


class ChannelAvailabilityBody(Struct, frozen=True, kw_only=True):
    """A sku as a channel sees it (``GET /v1/channels/{id}/availability``): its sellable total, and what each
    of its locations has available, in priority order."""

    channel_id: str
    sku: str
    available: int
    locations: tuple[LocationAvailable, ...]


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
