"""The live feed's fan-out (no NATS here): what waits for one client is bounded, and a client that does not
read is dropped and its connection aborted."""

from __future__ import annotations

import asyncio
import time

from stocksync.messages import PositionBody
from stocksync.messaging.feed import Listener, availability_frame


def _frame(sku: str, version: int):
    return availability_frame(
        PositionBody(
            location_id="store-1",
            sku=sku,
            on_hand=version,
            reserved=0,
            damaged=0,
            safety_stock=0,
            available=version,
            version=version,
        )
    )


def _listener(queue_max: int = 3, stall_s: float = 60.0) -> tuple[Listener, list[str]]:
    aborted: list[str] = []
    listener = Listener(
        ["store-1"],
        ["A", "B", "C", "D"],
        ["store-1"],
        queue_max=queue_max,
        stall_s=stall_s,
        abort=lambda: aborted.append("aborted"),
    )
    return listener, aborted


async def test_a_newer_version_of_a_waiting_position_replaces_it_in_its_place() -> None:
    listener, _ = _listener()
    for frame in (_frame("A", 1), _frame("B", 1), _frame("A", 2), _frame("A", 3)):
        listener.offer(frame)
    frames = await listener.take(timeout=1)
    assert [(frame.pair, frame.version) for frame in frames] == [(("store-1", "A"), 3), (("store-1", "B"), 1)]
    assert frames[0].data.startswith(b"event: availability\nid: store-1.A.3\ndata: {")


async def test_more_waiting_than_the_bound_drops_the_client_and_aborts_its_connection() -> None:
    listener, aborted = _listener(queue_max=2)
    listener.offer(_frame("A", 1))
    listener.offer(_frame("B", 1))
    assert listener.dropped is None
    listener.offer(_frame("C", 1))
    assert (listener.dropped, aborted) == ("slow_reader", ["aborted"])
    assert await listener.take(timeout=1) == []


async def test_a_client_that_took_nothing_for_the_stall_time_while_updates_wait_is_dropped() -> None:
    listener, aborted = _listener(stall_s=0.05)
    listener.offer(_frame("A", 1))
    await asyncio.sleep(0.1)
    listener.offer(_frame("A", 2))  # one position only: the bound alone would never drop it
    assert (listener.dropped, aborted) == ("slow_reader", ["aborted"])


async def test_a_reading_client_is_never_dropped_and_a_quiet_take_returns_nothing() -> None:
    listener, aborted = _listener(queue_max=1, stall_s=0.05)
    started = time.monotonic()
    assert await listener.take(timeout=0.05) == []
    assert time.monotonic() - started >= 0.04
    for version in range(1, 20):
        listener.offer(_frame("A", version))
        assert [f.version for f in await listener.take(timeout=1)] == [version]
    assert (listener.dropped, aborted) == (None, [])
