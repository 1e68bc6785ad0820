"""Small asyncio helpers shared by the long-running parts (worker, relay, sweeper)."""

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


async def quietly(awaitable: Awaitable) -> None:
    """Best effort: the subscription or message it concerns may already be gone."""
    try:
        await awaitable
    except Exception:
        pass
