"""The live feed's source: one NATS subscription per API process, fanned out in process to SSE clients.

N browsers cost one subscription on ``stocksync.out.availability.>`` and one on
``stocksync.out.reservation.>``, not N. Each message is decoded and framed once, then offered to the listeners
of its location. What waits for a listener is bounded, a newer update of a position replacing the one still
waiting: a client that does not read is dropped (``abort`` closes its connection), so a slow reader never
grows the server's memory. When NATS goes away every listener is ended too: its client reconnects (answered
503 until NATS is back) and starts again from the current positions, which is the catch-up, since core NATS
keeps nothing for a subscriber that was away.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, NamedTuple

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from stocksync import metrics
from stocksync.aio import cancel_and_wait
from stocksync.domain.model import PositionKey
from stocksync.messages import AvailabilityMessage, PositionBody, ReservationMessage
from stocksync.wire import AVAILABILITY_ALL
from stocksync_client.connection import connect

log = structlog.get_logger("stocksync.feed")

RESERVATION_ALL = "stocksync.out.reservation.>"
_availability = msgspec.json.Decoder(AvailabilityMessage)
_reservation = msgspec.json.Decoder(ReservationMessage)
_encode = msgspec.json.Encoder().encode


class Frame(NamedTuple):
    """One server-sent event, framed once for every listener; ``pair`` and ``version`` for availability."""

    data: bytes
    pair: PositionKey | None = None
    version: int = 0


def availability_frame(position: PositionBody) -> Frame:
    """``event: availability`` with ``id: <location_id>.<sku>.<version>`` and the position (section 4)."""
    ident = f"{position.location_id}.{position.sku}.{position.version}"
    data = b"event: availability\nid: %s\ndata: %s\n\n" % (ident.encode(), _encode(position))
    return Frame(data, (position.location_id, position.sku), position.version)


def reservation_frame(reservation: ReservationMessage) -> Frame:
    return Frame(b"event: reservation\ndata: %s\n\n" % _encode(reservation))


def _position(message: AvailabilityMessage) -> PositionBody:
    fields = {name: getattr(message, name) for name in PositionBody.__struct_fields__}
    return PositionBody(**fields)


class Listener:
    """One client's interest (its pairs, and where it sees reservation changes) and what waits for it.

    Availability is a state: a newer update of a position waiting to be sent replaces the older one (its
    versions then skip, never go back, as the out stream's may). What waits is bounded (``queue_max``
    positions and reservation changes), and a client that took nothing for ``stall_s`` while updates wait is
    not reading:
    it is dropped, and ``abort`` closes its connection, stuck as its response is behind a full socket.
    """

    def __init__(
        self,
        locations: Iterable[str],
        skus: Iterable[str],
        reservations_at: Iterable[str],
        *,
        queue_max: int,
        stall_s: float,
        abort: Callable[[], None] | None = None,
    ) -> None:
        self.locations = frozenset(locations)
        self.skus = frozenset(skus)
        self.reservations_at = frozenset(reservations_at)
        self.queue_max = queue_max
        self.stall_s = stall_s
        self.dropped: str | None = None
        self._abort = abort
        self._waiting: dict[object, Frame] = {}
        self._wake = asyncio.Event()
        self._taken_at = time.monotonic()
        self._serial = itertools.count()

    def offer(self, frame: Frame) -> None:
        if self.dropped is not None:
            return
        slot = frame.pair if frame.pair is not None else next(self._serial)
        stalled = bool(self._waiting) and time.monotonic() - self._taken_at > self.stall_s
        if stalled or (slot not in self._waiting and len(self._waiting) >= self.queue_max):
            self.drop("slow_reader")
            if self._abort is not None:
                self._abort()
            return
        self._waiting[slot] = frame
        self._wake.set()

    async def take(self, timeout: float) -> list[Frame]:
        """What waits (nothing when ``timeout`` passes first, or when dropped), oldest first."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
        frames = list(self._waiting.values())
        self._waiting.clear()
        self._wake.clear()
        self._taken_at = time.monotonic()
        return frames

    def drop(self, reason: str) -> None:
        if self.dropped is not None:
            return
        self.dropped = reason
        self._waiting.clear()
        self._wake.set()
        metrics.STREAM_DROPPED.labels(reason).inc()
        log.info("stream_client_dropped", reason=reason, locations=len(self.locations), skus=len(self.skus))


class LiveFeed:
    """The process's subscription to the out stream, and its listeners by location."""

    def __init__(
        self, nats_url: str, *, queue_max: int = 1000, stall_s: float = 30.0, **options: Any
    ) -> None:
        self.nats_url = nats_url
        self.queue_max = queue_max
        self.stall_s = stall_s
        self.options = options
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False
        self._stopping = False
        # Weak: a stream whose body never started (its client gone first) never runs its `forget`.
        self._by_location: dict[str, weakref.WeakSet[Listener]] = {}

    @property
    def ready(self) -> bool:
        """Connected and subscribed: a stream started now misses no change after its first positions."""
        return self._nc is not None and self._nc.is_connected and self._subscribed

    async def start(self) -> None:
        """Connects in the background (patiently: a NATS not up yet must not hold the API's start-up)."""
        self._task = asyncio.create_task(self._connect(), name="live-feed")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)
        for listener in self._listeners():
            listener.drop("shutdown")
        if self._nc is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=5)

    def listen(
        self,
        locations: Iterable[str],
        skus: Iterable[str],
        reservations_at: Iterable[str],
        abort: Callable[[], None] | None = None,
    ) -> Listener:
        listener = Listener(
            locations, skus, reservations_at, queue_max=self.queue_max, stall_s=self.stall_s, abort=abort
        )
        for location_id in listener.locations:
            self._by_location.setdefault(location_id, weakref.WeakSet()).add(listener)
        metrics.STREAM_CLIENTS.inc()
        weakref.finalize(listener, metrics.STREAM_CLIENTS.dec)
        return listener

    def forget(self, listener: Listener) -> None:
        for location_id in listener.locations:
            listeners = self._by_location.get(location_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._by_location[location_id]

    def _listeners(self) -> set[Listener]:
        return set().union(*self._by_location.values())

    async def _connect(self) -> None:
        self._nc = await connect(
            self.nats_url,
            name="stocksync-feed",
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            **self.options,
        )
        await self._nc.subscribe(AVAILABILITY_ALL, cb=self._on_availability)
        await self._nc.subscribe(RESERVATION_ALL, cb=self._on_reservation)
        self._subscribed = True
        log.info("live_feed_subscribed", nats=self.nats_url)

    async def _disconnected(self) -> None:
        if not self._stopping:
            log.warning("live_feed_disconnected", clients=len(self._listeners()))
        for listener in self._listeners():
            listener.drop("shutdown" if self._stopping else "nats_disconnected")

    async def _reconnected(self) -> None:
        log.info("live_feed_reconnected")

    async def _on_availability(self, msg: Msg) -> None:
        try:
            position = _position(_availability.decode(msg.data))
        except msgspec.DecodeError as error:  # only an admin key may publish here: say so, keep going
            log.warning("live_feed_malformed", subject=msg.subject, error=str(error))
            return
        frame = availability_frame(position)
        for listener in tuple(self._by_location.get(position.location_id, ())):
            if position.sku in listener.skus:
                listener.offer(frame)

    async def _on_reservation(self, msg: Msg) -> None:
        try:
            reservation = _reservation.decode(msg.data)
        except msgspec.DecodeError as error:
            log.warning("live_feed_malformed", subject=msg.subject, error=str(error))
            return
        frame = reservation_frame(reservation)
        for listener in tuple(self._by_location.get(reservation.location_id, ())):
            if reservation.location_id in listener.reservations_at:
                listener.offer(frame)
