"""The web shop's client: stock, pickup stores, reservations, orders and event outcomes over HTTP
(`EcommerceClient.http`, an `EcommerceHttp`), the same over NATS, and availability as it changes.

A NATS call publishes its event or order message on the inbound stream, like every channel, and waits for
the answer on ``stocksync.out.reservation.<reservation_id>`` or ``stocksync.out.order.<order_id>``,
subscribed before publishing so that it cannot be missed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from stocksync_client.aio import quietly
from stocksync_client.connection import connect
from stocksync_contract.events import (
    DEFAULT_TTL_S,
    Cancel,
    Channel,
    Collect,
    OrderAction,
    OrderRequest,
    QtyLine,
    Reserve,
)
from stocksync_contract.messages import (
    AvailabilityMessage,
    ChannelAvailabilityBody,
    OrderBody,
    OutcomeMessage,
    PickupStore,
    PositionBody,
    ReservationBody,
    ReservationMessage,
    Shortage,
)
from stocksync_contract.wire import (
    AVAILABILITY_BUCKET,
    availability_key,
    event_body,
    event_subject,
    key_options,
    order_inbound_subject,
    order_subject,
    reservation_subject,
)

T = TypeVar("T")
_decode_reservation = msgspec.json.Decoder(ReservationMessage).decode
_decode_order = msgspec.json.Decoder(OrderBody).decode
_decode_availability = msgspec.json.Decoder(AvailabilityMessage).decode
_encode = msgspec.json.encode
# What answers an order message: a status its action leads to, or ``error`` (a refusal that changed nothing).
_ORDER_ANSWERS = {"place": ("allocated", "rejected"), "ship": ("shipped",), "cancel": ("cancelled",)}


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """What of an error answer a client acts on; the rest of it (``status``, ``location_id``) is ignored."""

    error: str = "http_error"
    detail: str = ""
    field: str | None = None
    shortages: tuple[Shortage, ...] = ()


class ApiError(Exception):
    """An HTTP error answer (docs/errors.md): ``error`` the code, ``detail`` the sentence, ``field`` what
    failed validation, ``shortages`` every line a 409 ``insufficient_stock`` could not hold."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        field: str | None = None,
        shortages: tuple[Shortage, ...] = (),
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail
        self.field, self.shortages = field, shortages

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            body = msgspec.json.decode(response.content, type=_ErrorBody)
        except (msgspec.DecodeError, msgspec.ValidationError):
            body = _ErrorBody(detail=response.text)
        return cls(response.status_code, body.error, body.detail, field=body.field, shortages=body.shortages)


class ReservationTimeout(TimeoutError):
    """No answer in time. The event may still be applied: look up ``event_id`` (`EcommerceHttp.event`)."""

    def __init__(self, event_id: str, reservation_id: str, timeout_s: float) -> None:
        super().__init__(f"no answer for {event_id!r} (reservation {reservation_id!r}) within {timeout_s}s")
        self.event_id, self.reservation_id = event_id, reservation_id


class OrderTimeout(TimeoutError):
    """No answer in time. The order may still be placed, shipped or cancelled: see `EcommerceHttp.order`."""

    def __init__(self, order_id: str, action: str, timeout_s: float) -> None:
        super().__init__(f"no answer to {action} order {order_id!r} within {timeout_s}s")
        self.order_id, self.action = order_id, action


class EcommerceHttp:
    """The HTTP API (``/v1``) with the web shop's key; every error answer raises `ApiError`."""

    def __init__(self, api_url: str, api_key: str | None, *, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout_s)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, kind: type[T], **options: Any) -> T:
        response = await self.client.request(method, path, **options)
        if response.is_error:
            raise ApiError.of(response)
        return msgspec.json.decode(response.content, type=kind)

    # -- stock -----------------------------------------------------------------------------------------------

    async def availability(self, skus: Iterable[str], location_ids: Iterable[str] = ()) -> list[PositionBody]:
        """``GET /v1/availability``: the skus at the locations (zeros where never seen); without locations,
        wherever they are held."""
        params = [("sku", sku) for sku in skus] + [("location_id", loc) for loc in location_ids]
        answer = await self._call("GET", "/v1/availability", dict[str, list[PositionBody]], params=params)
        return answer["items"]

    async def channel_availability(
        self, channel_id: str, skus: Iterable[str]
    ) -> list[ChannelAvailabilityBody]:
        """``GET /v1/channels/{channel_id}/availability``: what the channel may sell of each sku."""
        path = f"/v1/channels/{_segment(channel_id)}/availability"
        params = [("sku", sku) for sku in skus]
        answer = await self._call("GET", path, dict[str, list[ChannelAvailabilityBody]], params=params)
        return answer["items"]

    async def pickup(
        self, lines: Iterable[QtyLine], *, near: tuple[float, float] | None = None, limit: int | None = None
    ) -> list[PickupStore]:
        """``GET /v1/pickup``: the pickup stores that can hold every line now, nearest first to ``near``."""
        params: list[tuple[str, Any]] = []
        for line in lines:  # sku and qty paired in order
            params += [("sku", line.sku), ("qty", line.qty)]
        if near is not None:
            params.append(("near", f"{near[0]},{near[1]}"))
        if limit is not None:
            params.append(("limit", limit))
        answer = await self._call("GET", "/v1/pickup", dict[str, list[PickupStore]], params=params)
        return answer["stores"]

    # -- reservations ----------------------------------------------------------------------------------------

    async def reserve(
        self,
        location_id: str,
        lines: Iterable[QtyLine],
        *,
        reservation_id: str | None = None,
        ttl_seconds: int = DEFAULT_TTL_S,
        reference: str | None = None,
        channel: Channel = "ecommerce",
    ) -> ReservationBody:
        """``POST /v1/reservations``: every line held or none; posting the same body again answers the same.
        Short stock raises `ApiError` 409 ``insufficient_stock`` with its ``shortages``."""
        body = {
            "location_id": location_id,
            "channel": channel,
            "lines": list(lines),
            "reservation_id": reservation_id or f"r-{uuid.uuid4().hex}",
            "ttl_seconds": ttl_seconds,
            "reference": reference,
        }
        return await self._call("POST", "/v1/reservations", ReservationBody, content=_encode(body))

    async def reservation(self, reservation_id: str, location_id: str | None = None) -> ReservationBody:
        """``GET /v1/reservations/{id}`` (``location_id`` where the id is held at several locations)."""
        return await self._call(
            "GET", _reservation_path(reservation_id), ReservationBody, params=_at(location_id)
        )

    async def collect(self, reservation_id: str, location_id: str | None = None) -> ReservationBody:
        """The customer took the goods: ``collected`` (again, if repeated), else 409 reservation_not_held."""
        path = _reservation_path(reservation_id) + "/collect"
        return await self._call("POST", path, ReservationBody, params=_at(location_id))

    async def cancel(self, reservation_id: str, location_id: str | None = None) -> ReservationBody:
        """Release the hold: ``cancelled`` (again, if repeated), else 409 reservation_not_held."""
        path = _reservation_path(reservation_id) + "/cancel"
        return await self._call("POST", path, ReservationBody, params=_at(location_id))

    # -- orders ----------------------------------------------------------------------------------------------

    async def place_order(self, order: OrderRequest) -> OrderBody:
        """``POST /v1/orders``: allocated whole to the channel's locations, or 409 with the shortages."""
        return await self._call("POST", "/v1/orders", OrderBody, content=_encode(order))

    async def order(self, order_id: str) -> OrderBody:
        return await self._call("GET", f"/v1/orders/{_segment(order_id)}", OrderBody)

    async def ship_order(self, order_id: str) -> OrderBody:
        """The goods left: its reservations become sales."""
        return await self._call("POST", f"/v1/orders/{_segment(order_id)}/ship", OrderBody)

    async def cancel_order(self, order_id: str) -> OrderBody:
        return await self._call("POST", f"/v1/orders/{_segment(order_id)}/cancel", OrderBody)

    # -- what became of an event -----------------------------------------------------------------------------

    async def event(self, event_id: str, location_id: str | None = None) -> OutcomeMessage:
        """``GET /v1/events/{event_id}``: the recorded outcome (404 ``not_found`` while there is none)."""
        return await self._call(
            "GET", f"/v1/events/{_segment(event_id)}", OutcomeMessage, params=_at(location_id)
        )


def _segment(value: str) -> str:
    return quote(value, safe="")


def _reservation_path(reservation_id: str) -> str:
    return f"/v1/reservations/{_segment(reservation_id)}"


def _at(location_id: str | None) -> dict[str, str]:
    return {"location_id": location_id} if location_id else {}


class EcommerceClient:
    """Open with `EcommerceClient.open`; ``api_key`` is the web shop's key (the NATS connection's token, and
    the HTTP bearer of `http`, which needs ``api_url``)."""

    def __init__(
        self,
        nc: Client,
        http: EcommerceHttp | None,
        *,
        source: str,
        timeout_s: float,
        nats_url: str,
        nats_options: dict[str, Any],
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._http = http
        self.source = source
        self.timeout_s = timeout_s
        self._nats_url, self._nats_options = nats_url, nats_options
        self._closed = False

    @classmethod
    async def open(
        cls,
        nats_url: str,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        source: str = "ecommerce",
        timeout_s: float = 10.0,
    ) -> EcommerceClient:
        """Connect (waiting for NATS while it is down; wrap in `asyncio.wait_for` to bound that)."""
        options = {"name": f"stocksync-{source}", **key_options(api_key)}
        nc = await connect(nats_url, **options)
        http = None if api_url is None else EcommerceHttp(api_url, api_key, timeout_s=timeout_s)
        return cls(nc, http, source=source, timeout_s=timeout_s, nats_url=nats_url, nats_options=options)

    @property
    def http(self) -> EcommerceHttp:
        """The HTTP API; open the client with ``api_url`` (and ``api_key``) to use it."""
        if self._http is None:
            raise RuntimeError("open the client with api_url (and api_key) to use the HTTP API")
        return self._http

    async def _connected(self) -> Client:
        """The connection, made again when the server closed it: it does when the key's authorisation
        expires (docs/reliability.md, "Access to NATS"); a `watch` running then ends with an error."""
        if self.nc.is_closed and not self._closed:
            self.nc = await connect(self._nats_url, **self._nats_options)
            self.js = self.nc.jetstream()
        return self.nc

    async def __aenter__(self) -> EcommerceClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.aclose()
        await quietly(self.nc.close())

    # -- reservations over NATS ------------------------------------------------------------------------------

    async def reserve(
        self,
        location_id: str,
        lines: Iterable[QtyLine],
        *,
        ttl_seconds: int = DEFAULT_TTL_S,
        reservation_id: str | None = None,
        reference: str | None = None,
        channel: Channel = "ecommerce",
        timeout_s: float | None = None,
    ) -> ReservationMessage:
        """Hold ``lines`` at ``location_id``: status ``held`` (with ``expires_at``), or ``rejected`` (with
        ``shortages`` when stock is short). Raises `ReservationTimeout` when no answer comes in time."""
        event = Reserve(
            event_id=self._event_id("reserve"),
            location_id=location_id,
            occurred_at=datetime.now(UTC),
            source=self.source,
            reference=reference,
            channel=channel,
            ttl_seconds=ttl_seconds,
            reservation_id=reservation_id or f"r-{uuid.uuid4().hex}",
            lines=list(lines),
        )
        return await self._request(event, timeout_s)

    async def collect(
        self, reservation_id: str, location_id: str, *, timeout_s: float | None = None
    ) -> ReservationMessage:
        """The customer took the goods: ``collected`` (again, if repeated), or the status that prevents it."""
        return await self._request(self._leave_held(Collect, reservation_id, location_id), timeout_s)

    async def cancel(
        self, reservation_id: str, location_id: str, *, timeout_s: float | None = None
    ) -> ReservationMessage:
        """Release the hold: ``cancelled`` (again, if repeated), or the status that prevents it."""
        return await self._request(self._leave_held(Cancel, reservation_id, location_id), timeout_s)

    def _event_id(self, kind: str) -> str:
        return f"{self.source}:{kind}:{uuid.uuid4().hex}"

    def _leave_held(
        self, kind: type[Collect | Cancel], reservation_id: str, location_id: str
    ) -> Collect | Cancel:
        return kind(
            event_id=self._event_id(kind.__struct_config__.tag),
            location_id=location_id,
            occurred_at=datetime.now(UTC),
            source=self.source,
            reservation_id=reservation_id,
        )

    async def _request(
        self, event: Reserve | Collect | Cancel, timeout_s: float | None
    ) -> ReservationMessage:
        """Publish the event and wait for the reservation message that answers this very event."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        body = event_body(event)
        sub = await self._answers(reservation_subject(event.reservation_id))
        try:
            # no Nats-Msg-Id: see PosClient
            await self.js.publish(event_subject(event), body, timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            while True:
                answer = _decode_reservation((await sub.next_msg(timeout=deadline - time.monotonic())).data)
                # Not an expiry, nor another request's answer, nor one for the same ids at another store (a
                # reservation, like an event, is its location and id).
                if (answer.event_id, answer.location_id) == (event.event_id, event.location_id):
                    return answer
        except NatsTimeoutError:
            raise ReservationTimeout(event.event_id, event.reservation_id, timeout_s) from None
        finally:
            await quietly(sub.unsubscribe())

    async def _answers(self, subject: str) -> Subscription:
        await self._connected()
        return await self.nc.subscribe(subject)

    # -- orders over NATS ------------------------------------------------------------------------------------

    async def place_order(self, order: OrderRequest, *, timeout_s: float | None = None) -> OrderBody:
        """Place an order on its channel: ``allocated``, or ``rejected`` with the ``shortages``; a refusal
        that changed nothing (an unknown channel, the id placed with other lines) has ``error``. Raises
        `OrderTimeout` when no answer comes in time (placing the same order again answers nothing new)."""
        return await self._order(order.channel_id, "place", order, timeout_s)

    async def ship_order(
        self, channel_id: str, order_id: str, *, timeout_s: float | None = None
    ) -> OrderBody:
        """The goods left: ``shipped``, or the order as it is with ``error`` (``order_not_allocated``)."""
        return await self._order(channel_id, "ship", OrderAction(order_id=order_id), timeout_s)

    async def cancel_order(
        self, channel_id: str, order_id: str, *, timeout_s: float | None = None
    ) -> OrderBody:
        """Release the order's holds: ``cancelled``, or the order as it is with ``error``."""
        return await self._order(channel_id, "cancel", OrderAction(order_id=order_id), timeout_s)

    async def _order(
        self, channel_id: str, action: str, body: OrderRequest | OrderAction, timeout_s: float | None
    ) -> OrderBody:
        """Publish the order message and wait for the order message that answers this action."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        sub = await self._answers(order_subject(body.order_id))
        try:
            await self.js.publish(order_inbound_subject(channel_id, action), _encode(body), timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            while True:
                answer = _decode_order((await sub.next_msg(timeout=deadline - time.monotonic())).data)
                if answer.error is not None or answer.status in _ORDER_ANSWERS[action]:
                    return answer
        except NatsTimeoutError:
            raise OrderTimeout(body.order_id, action, timeout_s) from None
        finally:
            await quietly(sub.unsubscribe())

    # -- availability from the bucket ------------------------------------------------------------------------

    async def watch(
        self, location_id: str | None = None, sku: str | None = None
    ) -> AsyncIterator[AvailabilityMessage]:
        """The current availability of the matching positions, then every change, never older than one seen.

        Use it with ``contextlib.aclosing`` (or exhaust it) so that the watcher stops when you are done.
        """
        await self._connected()
        kv = await self.js.key_value(AVAILABILITY_BUCKET)
        watcher = await kv.watch(availability_key(location_id or "*", sku or "*"))
        latest: dict[str, int] = {}
        try:
            async for entry in watcher:
                if entry is None or entry.operation is not None or not entry.value:  # end of backlog; deletes
                    continue
                message = _decode_availability(entry.value)
                if message.version > latest.get(entry.key, -1):
                    latest[entry.key] = message.version
                    yield message
        finally:
            await quietly(watcher.stop())
