"""The web shop's client: pickup stores over HTTP, reservations over NATS, availability as it changes.

A reservation call publishes its event on the inbound stream, like every channel, and waits for the answer on
``stocksync.out.reservation.<reservation_id>``, subscribed before publishing so that it cannot be missed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from stocksync.aio import quietly
from stocksync.clock import utc_now
from stocksync.domain.events import DEFAULT_TTL_S, Cancel, Channel, Collect, QtyLine, Reserve
from stocksync.domain.pickup import PickupStore
from stocksync.messages import AvailabilityMessage, ReservationMessage
from stocksync.messaging.topology import connect
from stocksync.wire import (
    AVAILABILITY_BUCKET,
    availability_key,
    event_body,
    event_subject,
    key_options,
    reservation_subject,
)

_decode_reservation = msgspec.json.Decoder(ReservationMessage).decode
_decode_availability = msgspec.json.Decoder(AvailabilityMessage).decode
_decode_pickup = msgspec.json.Decoder(dict[str, list[PickupStore]]).decode


class ApiError(Exception):
    """An HTTP error answer: ``{"error": "<code>", "detail": "<sentence>"}`` and its status."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class ReservationTimeout(TimeoutError):
    """No answer in time. The event may still be applied: look it up by ``event_id`` (GET /v1/events/{id})."""

    def __init__(self, event_id: str, reservation_id: str, timeout_s: float) -> None:
        super().__init__(f"no answer for {event_id!r} (reservation {reservation_id!r}) within {timeout_s}s")
        self.event_id, self.reservation_id = event_id, reservation_id


class EcommerceClient:
    """Open with `EcommerceClient.open`; ``api_key`` is the web shop's key (the NATS connection's token, and
    the HTTP bearer for `pickup`, which also needs ``api_url``)."""

    def __init__(
        self,
        nc: Client,
        http: httpx.AsyncClient | None,
        *,
        source: str,
        timeout_s: float,
        nats_url: str,
        nats_options: dict[str, Any],
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.http = http
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
        http = None
        if api_url is not None:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            http = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout_s)
        return cls(nc, http, source=source, timeout_s=timeout_s, nats_url=nats_url, nats_options=options)

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
        if self.http is not None:
            await self.http.aclose()
        await quietly(self.nc.close())

    # -- HTTP ------------------------------------------------------------------------------------------------

    async def pickup(
        self, lines: Iterable[QtyLine], *, near: tuple[float, float] | None = None, limit: int | None = None
    ) -> list[PickupStore]:
        """``GET /v1/pickup``: the pickup stores that can hold every line now, nearest first to ``near``."""
        if self.http is None:
            raise RuntimeError("open the client with api_url (and api_key) to ask for pickup stores")
        params: list[tuple[str, Any]] = []
        for line in lines:  # sku and qty paired in order
            params += [("sku", line.sku), ("qty", line.qty)]
        if near is not None:
            params.append(("near", f"{near[0]},{near[1]}"))
        if limit is not None:
            params.append(("limit", limit))
        response = await self.http.get("/v1/pickup", params=params)
        if response.is_error:
            raise _api_error(response)
        return _decode_pickup(response.content)["stores"]

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
            occurred_at=utc_now(),
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
            occurred_at=utc_now(),
            source=self.source,
            reservation_id=reservation_id,
        )

    async def _request(
        self, event: Reserve | Collect | Cancel, timeout_s: float | None
    ) -> ReservationMessage:
        """Publish the event and wait for the reservation message that answers this very event."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        body = event_body(event)
        await self._connected()
        sub = await self.nc.subscribe(reservation_subject(event.reservation_id))
        try:
            await self.js.publish(
                event_subject(event), body, timeout=timeout_s
            )  # no Nats-Msg-Id: see PosClient
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


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = msgspec.json.decode(response.content, type=dict[str, Any])
    except msgspec.DecodeError:
        body = {}
    error, detail = body.get("error", "http_error"), body.get("detail", response.text)
    return ApiError(response.status_code, str(error), str(detail))
