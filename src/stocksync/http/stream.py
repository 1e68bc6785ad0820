"""``GET /v1/stream``: the live feed for browsers and back ends that cannot speak NATS (spec section 6).

The client is registered with the process's `LiveFeed` before its positions are read, so no change committed
after that read is missed; a change already in the snapshot is dropped by its version (updates of one position
go out in increasing ``version`` only). Reads are everyone's, as ``GET /v1/availability``; reservation
changes go, for a pos or staff key, only where that key may list reservations.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from stocksync.adapters.queries import Queries
from stocksync.domain.errors import Unavailable
from stocksync.domain.events import LocationId, Sku
from stocksync.domain.model import Position, PositionKey
from stocksync.http.auth import SESSION_SCHEME
from stocksync.http.errors import documented
from stocksync.messages import position_body
from stocksync.messaging.feed import Frame, Listener, LiveFeed, availability_frame
from stocksync.service.keys import SCOPED_ROLES, ApiKey

MAX_STREAM_LOCATIONS = 50
MAX_STREAM_SKUS = 500
HEARTBEAT = b": heartbeat\n\n"
RETRY_MS = 2000  # what EventSource waits before it reconnects after the server ended a stream
SNAPSHOT_CHUNK = 200  # positions per write of the first positions

StreamLocations = Annotated[
    list[LocationId],
    QueryParameter(min_items=1, max_items=MAX_STREAM_LOCATIONS, description="repeatable, 1 to 50"),
]
StreamSkus = Annotated[
    list[Sku], QueryParameter(min_items=1, max_items=MAX_STREAM_SKUS, description="repeatable, 1 to 500")
]

_EVENTS = (
    "Server-sent events: first `event: availability` with `id: <location_id>.<sku>.<version>` and a position "
    "as data for every pair asked for, then one per committed change of any of them (increasing `version` "
    "per position), `event: reservation` with the reservation message of the NATS contract for every change "
    "of a reservation at a location asked for, and `: heartbeat` comments. A client that does not read is "
    "disconnected; it reconnects and starts again from the current positions."
)


class StreamController(Controller):
    path = "/stream"
    tags = ["stock"]

    @get(
        "/",
        media_type="text/event-stream",
        security=[{SESSION_SCHEME: []}],  # beside the router's bearer key
        responses={
            200: ResponseSpec(
                str, description=_EVENTS, media_type="text/event-stream", generate_examples=False
            ),
            **documented(400, 404),
        },
    )
    async def stream(
        self,
        request: Request[ApiKey, Any, Any],
        key: NamedDependency[ApiKey],
        queries: NamedDependency[Queries],
        feed: NamedDependency[LiveFeed | None],
        heartbeat_s: NamedDependency[float],
        location_id: StreamLocations,
        sku: StreamSkus,
    ) -> Stream:
        """The positions of every (location, sku) asked for, then their changes, live.

        503 while this process is not connected to NATS (the feed's source); 404 for an unknown location."""
        locations, skus = list(dict.fromkeys(location_id)), list(dict.fromkeys(sku))
        listener = None
        if feed is not None and feed.ready:  # listening before the read: no change after it is missed
            abort = request.scope.get("extensions", {}).get("stocksync.abort")
            listener = feed.listen(locations, skus, _reservations_at(key, locations), abort)
        try:
            snapshot = await queries.positions(skus, locations)  # an unknown location is 404, NATS or not
        except BaseException:
            if listener is not None:
                feed.forget(listener)  # type: ignore[union-attr]
            raise
        if feed is None or listener is None:
            raise Unavailable("the live feed is not connected to NATS; retry in a few seconds")
        return Stream(
            _events(feed, listener, snapshot, heartbeat_s),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


def _reservations_at(key: ApiKey, locations: Sequence[str]) -> list[str]:
    """Where ``key`` sees reservation changes: as it may list them (`auth.listing_scope`)."""
    return [loc for loc in locations if key.role not in SCOPED_ROLES or loc in key.locations]


async def _events(
    feed: LiveFeed, listener: Listener, snapshot: Sequence[Position], heartbeat_s: float
) -> AsyncIterator[bytes]:
    """The snapshot, then the listener's frames newer than what was sent, and a heartbeat at least every
    ``heartbeat_s``; ends when the listener is dropped (slow reader, NATS gone, shutdown)."""
    try:
        yield b"retry: %d\n: connected\n\n" % RETRY_MS
        sent: dict[PositionKey, int] = {}
        for start in range(0, len(snapshot), SNAPSHOT_CHUNK):
            chunk = snapshot[start : start + SNAPSHOT_CHUNK]
            sent.update((position.key, position.version) for position in chunk)
            yield b"".join(availability_frame(position_body(position)).data for position in chunk)
        beat = time.monotonic() + heartbeat_s
        while listener.dropped is None:
            frames = await listener.take(beat - time.monotonic())
            if listener.dropped is not None:
                return
            if time.monotonic() >= beat:
                beat = time.monotonic() + heartbeat_s
                yield HEARTBEAT
            if fresh := b"".join(frame.data for frame in frames if _newer(frame, sent)):
                yield fresh
    finally:
        feed.forget(listener)


def _newer(frame: Frame, sent: dict[PositionKey, int]) -> bool:
    """A reservation change always; a position only past the version sent last (it may be in the snapshot)."""
    if frame.pair is None:
        return True
    if frame.version <= sent.get(frame.pair, -1):
        return False
    sent[frame.pair] = frame.version
    return True
