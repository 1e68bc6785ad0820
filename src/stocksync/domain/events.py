"""The events the ledger applies: the inbound events of the wire contract (`stocksync_contract.events`, one
definition shared with the clients), and the internal commands (expiry, safety stock), which extend the same
base but are never accepted from outside.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from stocksync_contract.events import (
    DEFAULT_TTL_S,
    EVENT_ID_PATTERN,
    ID_PATTERN,
    INBOUND_TYPES,
    MAX_BODY_BYTES,
    MAX_LINES,
    MAX_QUANTITY,
    NO_CONTROL_CHARACTERS,
    RESERVATION_ID_PATTERN,
    Adjust,
    AdjustLine,
    Cancel,
    Channel,
    Collect,
    Count,
    CountLine,
    Event,
    EventId,
    InboundEvent,
    LocationId,
    OrderAction,
    OrderRequest,
    Qty,
    QtyLine,
    Receipt,
    ReservationId,
    Reserve,
    Return,
    ReturnLine,
    Sale,
    ShipTo,
    Sku,
    Text,
    Timestamp,
    TooDeep,
    Ttl,
    decode_inbound,
    decoder,
    encode,
)

__all__ = [
    "Adjust",
    "AdjustLine",
    "Cancel",
    "Channel",
    "Collect",
    "Command",
    "Count",
    "CountLine",
    "DEFAULT_TTL_S",
    "EVENT_ID_PATTERN",
    "Event",
    "EventId",
    "Expire",
    "ID_PATTERN",
    "INBOUND_TYPES",
    "InboundEvent",
    "LocationId",
    "MAX_BODY_BYTES",
    "MAX_LINES",
    "MAX_QUANTITY",
    "NO_CONTROL_CHARACTERS",
    "OrderAction",
    "OrderRequest",
    "Qty",
    "QtyLine",
    "RESERVATION_ID_PATTERN",
    "Receipt",
    "ReservationId",
    "Reserve",
    "Return",
    "ReturnLine",
    "Sale",
    "SetSafetyStock",
    "ShipTo",
    "Sku",
    "Text",
    "Timestamp",
    "TooDeep",
    "Ttl",
    "decode_inbound",
    "decoder",
    "encode",
]


class Expire(Event, frozen=True, kw_only=True, tag="expire"):
    """Internal: the sweeper's command to expire one held reservation past its expiry."""

    reservation_id: ReservationId


class SetSafetyStock(Event, frozen=True, kw_only=True, tag="safety_stock"):
    """Internal: a new safety-stock buffer for one position."""

    sku: Sku
    qty: Annotated[int, Meta(ge=0, le=MAX_QUANTITY)]


Command = InboundEvent | Expire | SetSafetyStock
