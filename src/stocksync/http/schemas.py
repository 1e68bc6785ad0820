"""HTTP bodies: one msgspec Struct per contract, and the one way a request body is decoded.

Bodies are decoded from the raw bytes by msgspec (not by Litestar) so that a validation failure names the
exact field (``lines[0].qty``) in the error answer; the same Structs also document the bodies in OpenAPI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import httpx
import msgspec
from litestar import Request
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import PathParameter, QueryParameter
from msgspec import Meta, Struct

from stocksync.adapters.queries import MovementView
from stocksync.adapters.webhooks import Delivery
from stocksync.domain.channels import Channel as SalesChannel
from stocksync.domain.errors import InvalidRequest
from stocksync.domain.events import (
    DEFAULT_TTL_S,
    ID_PATTERN,
    MAX_LINES,
    MAX_QUANTITY,
    NO_CONTROL_CHARACTERS,
    RESERVATION_ID_PATTERN,
    Channel,
    LocationId,
    QtyLine,
    ReservationId,
    Reserve,
    Text,
    TooDeep,
    Ttl,
)
from stocksync.domain.ledger import merge_lines
from stocksync.domain.model import Location, Reservation, ReservationLine, ReservationStatus, Shortage
from stocksync.domain.pickup import LatLon, PickupStore
from stocksync.domain.webhooks import SUBJECT_PATTERN, Webhook
from stocksync.messages import ChannelAvailabilityBody, PositionBody, ReservationBody

T = TypeVar("T")

# Single-valued parameters: Litestar drops the msgspec constraints of an aliased type there (it keeps those of
# list items), so their patterns are restated.
LocationIdPath = Annotated[str, PathParameter(pattern=ID_PATTERN, description="location id")]
SkuPath = Annotated[str, PathParameter(pattern=ID_PATTERN, description="sku id")]
ReservationIdPath = Annotated[str, PathParameter(pattern=RESERVATION_ID_PATTERN, description="reservation")]
ChannelIdPath = Annotated[str, PathParameter(pattern=ID_PATTERN, description="channel id")]
WebhookIdPath = Annotated[str, PathParameter(pattern=ID_PATTERN, description="webhook id")]
OrderIdPath = Annotated[str, PathParameter(pattern=RESERVATION_ID_PATTERN, description="order id")]
MAX_CHANNEL_LOCATIONS = 100
LocationIdQuery = Annotated[str | None, QueryParameter(pattern=ID_PATTERN, description="location id")]
SkuQuery = Annotated[str | None, QueryParameter(pattern=ID_PATTERN, description="sku id")]

# -- requests ------------------------------------------------------------------------------------------------


class ReserveRequest(Struct, frozen=True, kw_only=True):
    """``POST /v1/reservations``: the HTTP face of a ``reserve`` event."""

    location_id: LocationId
    channel: Channel
    lines: Annotated[list[QtyLine], Meta(min_length=1, max_length=MAX_LINES)]
    reservation_id: ReservationId | None = None
    ttl_seconds: Ttl = DEFAULT_TTL_S
    reference: Text | None = None

    def event(self, reservation_id: str, now: datetime, source: str) -> Reserve:
        return Reserve(
            event_id=f"http:reserve:{reservation_id}",
            location_id=self.location_id,
            occurred_at=now,
            source=source,
            reference=self.reference,
            reservation_id=reservation_id,
            channel=self.channel,
            ttl_seconds=self.ttl_seconds,
            lines=self.lines,
        )

    def same_as(self, reservation: Reservation) -> bool:
        """Whether ``reservation`` is what this body asks for: a repeat, not a conflict."""
        return (
            reservation.location_id == self.location_id
            and reservation.channel == self.channel
            and reservation.reference == self.reference
            and reservation.expires_at - reservation.created_at == timedelta(seconds=self.ttl_seconds)
            and reservation.lines == merge_lines(ReservationLine(sku=ln.sku, qty=ln.qty) for ln in self.lines)
        )


class LocationRequest(Struct, frozen=True, kw_only=True):
    """``PUT /v1/locations/{location_id}``."""

    kind: Literal["store", "warehouse", "online"]
    name: Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)]
    pickup_enabled: bool = False
    lat: Annotated[float, Meta(ge=-90, le=90)] | None = None
    lon: Annotated[float, Meta(ge=-180, le=180)] | None = None

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            missing = "lat" if self.lat is None else "lon"
            raise ValueError(f"`{missing}` is required with the other coordinate: give both or neither")

    def location(self, location_id: str) -> Location:
        return Location(location_id=location_id, **msgspec.structs.asdict(self))


class ChannelRequest(Struct, frozen=True, kw_only=True):
    """``PUT /v1/channels/{channel_id}``: ``locations`` in priority order, the first preferred."""

    name: Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)]
    locations: Annotated[list[LocationId], Meta(max_length=MAX_CHANNEL_LOCATIONS)]
    buffer: Annotated[int, Meta(ge=0, le=MAX_QUANTITY)] = 0

    def __post_init__(self) -> None:
        if len(set(self.locations)) != len(self.locations):
            raise ValueError("`locations` names a location twice")

    def channel(self, channel_id: str) -> SalesChannel:
        locations = tuple(self.locations)
        return SalesChannel(channel_id=channel_id, name=self.name, locations=locations, buffer=self.buffer)


class WebhookRequest(Struct, frozen=True, kw_only=True):
    """``PUT /v1/webhooks/{webhook_id}``: where to POST which out-stream messages, and the signing secret."""

    url: Annotated[str, Meta(pattern=r"^https?://[^\s\x00-\x1f\x7f]+$", max_length=2048)]
    subjects: Annotated[
        list[Annotated[str, Meta(pattern=SUBJECT_PATTERN)]], Meta(min_length=1, max_length=20)
    ]
    secret: Annotated[str, Meta(min_length=16, max_length=256, pattern=NO_CONTROL_CHARACTERS)]

    def webhook(self, webhook_id: str) -> Webhook:
        """Refuses a URL that no delivery could be POSTed to (a host that is no IDNA name, a broken port) now,
        not at every delivery."""
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as error:
            raise InvalidRequest(f"url: {error}", field="url") from None
        return Webhook(webhook_id=webhook_id, url=self.url, subjects=tuple(self.subjects), secret=self.secret)


class SafetyStockRequest(Struct, frozen=True, kw_only=True):
    """``PUT /v1/locations/{location_id}/safety-stock/{sku}``."""

    qty: Annotated[int, Meta(ge=0, le=MAX_QUANTITY)]


# -- answers -------------------------------------------------------------------------------------------------


class PositionList(Struct, frozen=True, kw_only=True):
    items: list[PositionBody]


class PickupAnswer(Struct, frozen=True, kw_only=True):
    stores: list[PickupStore]


class ReservationList(Struct, frozen=True, kw_only=True):
    items: list[ReservationBody]


class ChannelBody(Struct, frozen=True, kw_only=True):
    channel_id: str
    name: str
    locations: tuple[str, ...]
    buffer: int

    @classmethod
    def of(cls, channel: SalesChannel) -> ChannelBody:
        return cls(**msgspec.structs.asdict(channel))


class ChannelList(Struct, frozen=True, kw_only=True):
    items: list[ChannelBody]


class ChannelAvailabilityList(Struct, frozen=True, kw_only=True):
    items: list[ChannelAvailabilityBody]


class WebhookBody(Struct, frozen=True, kw_only=True):
    """A webhook as HTTP shows it: never its secret."""

    webhook_id: str
    url: str
    subjects: tuple[str, ...]

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookBody:
        return cls(webhook_id=webhook.webhook_id, url=webhook.url, subjects=webhook.subjects)


class WebhookList(Struct, frozen=True, kw_only=True):
    items: list[WebhookBody]


class DeliveryList(Struct, frozen=True, kw_only=True):
    items: list[Delivery]


class LocationList(Struct, frozen=True, kw_only=True):
    items: list[Location]


class MovementPage(Struct, frozen=True, kw_only=True):
    """``next`` is the opaque cursor to pass as ``after``; null when no more movements are visible yet."""

    items: list[MovementView]
    next: str | None


class EventAnswer(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``POST /v1/events``: the outcome, and the reservation when the event concerns one that exists."""

    event_id: str
    outcome: str
    error: str | None = None
    reservation: ReservationBody | None = None


class Health(Struct, frozen=True, kw_only=True):
    """``ok``: every check passes; ``degraded``: the database answers but another check fails (the API still
    serves); ``unavailable``: the database does not answer. ``serves``: the parts of this process that can
    work now (``api``, ``worker``, ``relay``, ``sweeper``)."""

    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, bool]
    serves: dict[str, bool] = {}


# -- errors (built by http/errors.py; docs/errors.md says what each code means) -----------------------------

ErrorCode = Literal[
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "unknown_location",
    "unknown_reservation",
    "reservation_not_held",
    "reservation_exists",
    "event_id_conflict",
    "unknown_channel",
    "unknown_order",
    "order_not_allocated",
    "order_id_conflict",
    "return_not_in_order",
    "body_too_large",
    "unavailable",
]


class ErrorBody(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Every error answer but a shortage: a machine code and a sentence for people."""

    error: ErrorCode
    detail: str
    field: str | None = None  # invalid_request: the parameter or body field that failed (`lines[0].qty`)
    # reservation_not_held: the state the reservation is in; order_not_allocated: the order's
    status: ReservationStatus | Literal["shipped", "rejected"] | None = None
    location_id: str | None = None  # unknown_location of a read: the first location not known


class ShortageError(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """409 ``insufficient_stock``: a reservation or an order refused whole, with every line it could not hold
    (an order's at the channel: what the channel may sell)."""

    error: Literal["insufficient_stock"]
    detail: str
    shortages: list[Shortage]


# -- decoding ------------------------------------------------------------------------------------------------

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"^(?:Object missing required field )?`(?P<name>[^`]+)`")


def invalid(error: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's "<message> - at `$.lines[0]`" as an `InvalidRequest` naming the field (``lines[0].qty``)."""
    parts = _AT.match(str(error))
    assert parts is not None  # the pattern matches any text
    message, path = parts["message"], (parts["path"] or "").lstrip(".")
    if named := _NAMED.match(message):
        path = f"{path}.{named['name']}" if path else named["name"]
    return InvalidRequest(message, field=path or "body")


async def read_body(request: Request[Any, Any, Any], decode: Callable[[bytes], T]) -> T:
    try:
        return decode(await request.body())
    except msgspec.ValidationError as error:
        raise invalid(error) from None
    except TooDeep as error:
        raise InvalidRequest(str(error), field="body") from None
    except msgspec.DecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", field="body") from None


def body_operation(kind: Any) -> type[Operation]:
    """An OpenAPI operation documenting ``kind`` as the request body (that `read_body` decodes)."""
    schema = _inline(*msgspec.json.schema_components([kind], ref_template="{name}"))

    @dataclass
    class BodyOperation(Operation):
        reads_body = True  # `errors.document_errors`: its 400 and 413

        def __post_init__(self) -> None:
            media = OpenAPIMediaType(schema=schema)  # type: ignore[arg-type]  # plain JSON Schema
            self.request_body = RequestBody(content={"application/json": media}, required=True)

    return BodyOperation


def _inline(schemas: Sequence[Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """msgspec's schema with its definitions inlined: Litestar owns ``components/schemas``."""

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"]])
            return {key: resolve(value) for key, value in node.items() if key != "mapping"}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schemas[0])


# -- query parameters that Litestar's types cannot say -------------------------------------------------------


def pickup_lines(skus: Sequence[str], quantities: Sequence[int] | None) -> list[ReservationLine]:
    """``sku`` and ``qty`` paired in order; a sku without its qty wants 1."""
    quantities = quantities or []
    if len(quantities) > len(skus):
        raise InvalidRequest(
            "more qty than sku parameters: each qty pairs with the sku at its position", field="qty"
        )
    padded = [*quantities, *[1] * (len(skus) - len(quantities))]
    return [ReservationLine(sku=sku, qty=qty) for sku, qty in zip(skus, padded, strict=True)]


def at_one_location(found: Sequence[T], missing: Exception, what: str) -> T:
    """The one record an id names (an event or a reservation is its location and id together): without
    ``?location_id=``, an id found at several locations is 400 asking for one; at none, ``missing``."""
    if not found:
        raise missing
    if len(found) > 1:
        raise InvalidRequest(
            f"{what} is known at several locations; name one with ?location_id=", field="location_id"
        )
    return found[0]


def parse_near(near: str | None) -> LatLon | None:
    """``lat,lon`` in degrees."""
    if near is None:
        return None
    try:
        lat, lon = (float(part) for part in near.split(","))
    except ValueError:
        raise InvalidRequest("near must be `lat,lon` in degrees", field="near") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidRequest("near is off the globe: lat within ±90, lon within ±180", field="near")
    return lat, lon
