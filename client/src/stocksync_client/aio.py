"""Small asyncio helpers of the clients, used by the server's long-running parts (worker, relay) too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep for ``seconds``, or less when ``stop`` (or ``wake``) is set meanwhile."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def cancel_and_wait(task: asyncio.Task, *, retry_s: float = 1.0) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it runs on.

    Python 3.11's `asyncio.wait_for` loses a cancellation that arrives as its inner future completes
    (CPython gh-86296), and nats-py's ``fetch`` and ``next_msg`` run on it: one `Task.cancel` may not stop a
    task that pulls messages. Seen as a test suite stalled for ever in a till client's ``close()``.
    How it ended is dropped, as ``gather(..., return_exceptions=True)`` did where this replaced it.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" when it had failed


async def quietly(awaitable: Awaitable) -> None:
    """Best effort: the subscription or message it concerns may already be gone."""
    try:
        await awaitable
    except Exception:
        pass
