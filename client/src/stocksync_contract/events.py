"""Inbound events (spec section 3): one msgspec Struct per type, tagged by ``type``, and the order requests.

The server validates NATS bodies and ``POST /v1/events`` with these very Structs, so a client that builds its
events from them is refused by neither; the server's internal commands (expiry, safety stock) extend `Event`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
EVENT_ID_PATTERN = r"^[\x20-\x7e]{1,128}$"
# A reservation id is also a NATS subject token and an HTTP path segment: no '.', '*', '>', '/' or spaces.
RESERVATION_ID_PATTERN = r"^[!-)+,\-0-=?-~]{1,128}$"
MAX_LINES = 500
MAX_QUANTITY = 10_000_000  # a counted quantity or a safety stock: beyond any one position's stock
MAX_BODY_BYTES = 256 * 1024

LocationId = Annotated[str, Meta(pattern=ID_PATTERN, description="location id")]
Sku = Annotated[str, Meta(pattern=ID_PATTERN, description="sku id")]
EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN, description="1..128 printable ASCII characters")]
ReservationId = Annotated[str, Meta(pattern=RESERVATION_ID_PATTERN)]
Qty = Annotated[int, Meta(ge=1, le=100_000)]
Timestamp = Annotated[datetime, Meta(tz=True)]
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"  # PostgreSQL text refuses NUL; none belong in a name
Text = Annotated[str, Meta(max_length=256, pattern=NO_CONTROL_CHARACTERS)]
Channel = Literal["ecommerce", "staff"]
Ttl = Annotated[int, Meta(ge=60, le=604_800)]
DEFAULT_TTL_S = 7200


class QtyLine(Struct, frozen=True, kw_only=True):
    sku: Sku
    qty: Qty


class ReturnLine(Struct, frozen=True, kw_only=True):
    sku: Sku
    qty: Qty
    disposition: Literal["restock", "damaged"] = "restock"


class AdjustLine(Struct, frozen=True, kw_only=True):
    sku: Sku
    delta: Annotated[int, Meta(ge=-100_000, le=100_000)]
    reason: Literal["shrinkage", "damage", "found", "correction"]

    def __post_init__(self) -> None:
        if self.delta == 0:
            raise ValueError("`delta` must be a non-zero integer")


class CountLine(Struct, frozen=True, kw_only=True):
    sku: Sku
    counted: Annotated[int, Meta(ge=0, le=MAX_QUANTITY)]


def _lines(kind: type) -> type:
    return Annotated[list[kind], Meta(min_length=1, max_length=MAX_LINES)]  # type: ignore[valid-type]


class Event(Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    event_id: EventId
    location_id: LocationId
    occurred_at: Timestamp
    source: Text | None = None
    reference: Text | None = None

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class Sale(Event, frozen=True, kw_only=True, tag="sale"):
    lines: _lines(QtyLine)  # type: ignore[valid-type]


class Return(Event, frozen=True, kw_only=True, tag="return"):
    lines: _lines(ReturnLine)  # type: ignore[valid-type]
    order_id: ReservationId | None = None  # an online order returned at this store (section 7)


class Receipt(Event, frozen=True, kw_only=True, tag="receipt"):
    lines: _lines(QtyLine)  # type: ignore[valid-type]


class Adjust(Event, frozen=True, kw_only=True, tag="adjust"):
    lines: _lines(AdjustLine)  # type: ignore[valid-type]


class Count(Event, frozen=True, kw_only=True, tag="count"):
    lines: _lines(CountLine)  # type: ignore[valid-type]


class Reserve(Event, frozen=True, kw_only=True, tag="reserve"):
    reservation_id: ReservationId
    channel: Channel
    ttl_seconds: Ttl = DEFAULT_TTL_S
    lines: _lines(QtyLine)  # type: ignore[valid-type]


class Collect(Event, frozen=True, kw_only=True, tag="collect"):
    reservation_id: ReservationId
    lines: Annotated[list[QtyLine], Meta(max_length=0)] = []


class Cancel(Event, frozen=True, kw_only=True, tag="cancel"):
    reservation_id: ReservationId
    lines: Annotated[list[QtyLine], Meta(max_length=0)] = []


class ShipTo(Struct, frozen=True, kw_only=True):
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]


class OrderRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/orders`` and the body of ``stocksync.in._order.<channel_id>.place`` (section 7)."""

    order_id: ReservationId
    channel_id: Annotated[str, Meta(pattern=ID_PATTERN, description="channel id")]
    lines: Annotated[list[QtyLine], Meta(min_length=1, max_length=MAX_LINES)]
    ship_to: ShipTo | None = None
    ttl_seconds: Ttl = DEFAULT_TTL_S
    reference: Text | None = None


class OrderAction(Struct, frozen=True, kw_only=True):
    """The body of ``stocksync.in._order.<channel_id>.ship`` and ``.cancel``."""

    order_id: ReservationId


InboundEvent = Sale | Return | Receipt | Adjust | Count | Reserve | Collect | Cancel
INBOUND_TYPES: tuple[str, ...] = (
    "sale",
    "return",
    "receipt",
    "adjust",
    "count",
    "reserve",
    "collect",
    "cancel",
)

T = TypeVar("T")


class TooDeep(msgspec.DecodeError):
    """JSON nested deeper than the decoder follows (msgspec recurses, and gives up with RecursionError at
    Python's recursion limit). No message needs more than a few levels; a body that does is not one."""


def decoder(kind: type[T]) -> Callable[[bytes | str], T]:
    """A JSON decoder and validator for ``kind`` that refuses nesting too deep as `TooDeep`, a DecodeError:
    every untrusted body (NATS and HTTP) is decoded by one of these, so none can raise RecursionError."""
    decode = msgspec.json.Decoder(kind).decode

    def decode_body(body: bytes | str) -> T:
        try:
            return decode(body)
        except RecursionError:
            raise TooDeep("the body nests JSON too deeply to decode (an event nests three levels)") from None

    return decode_body


# Each raises msgspec.ValidationError, or DecodeError (TooDeep among them), naming the field.
decode_inbound: Callable[[bytes | str], InboundEvent] = decoder(InboundEvent)  # type: ignore[arg-type]
_encoder = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    return _encoder.encode(event)
