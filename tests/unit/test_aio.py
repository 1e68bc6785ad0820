"""`cancel_and_wait` stops a task that loses a cancellation, as nats-py's fetch can on Python 3.11."""

from __future__ import annotations

import asyncio

from stocksync.aio import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_still_stopped() -> None:
    cancellations = 0

    async def pulls_messages() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # what a lost cancellation looks like from outside
                cancellations += 1
                if cancellations > 1:
                    raise

    task = asyncio.create_task(pulls_messages())
    await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await cancel_and_wait(task, retry_s=0.05)
    assert task.cancelled()
    assert cancellations == 2
