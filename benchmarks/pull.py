"""What both naive baselines share (``benchmarks/naive.py``, ``benchmarks/naive_sql.py``): consumers pulling
from the worker's durable consumer side by side, each message applied by the baseline's own function and then
acknowledged, until SIGTERM; and their command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

import nats
from nats.aio.msg import Msg

from stocksync.wire import IN_STREAM, WORKER_CONSUMER


async def consume(js, stop: asyncio.Event, apply_one: Callable[[Msg], Awaitable[None]]) -> None:
    """Pull from the worker's durable consumer until ``stop``: each message applied, then acknowledged."""
    sub = await js.pull_subscribe_bind(WORKER_CONSUMER, IN_STREAM)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except TimeoutError:
            continue
        for msg in msgs:
            await apply_one(msg)
            await msg.ack()


async def serve(
    nats_url: str, name: str, concurrency: int, apply_one: Callable[[Msg], Awaitable[None]], counts: dict
) -> None:
    """``concurrency`` consumers side by side until SIGTERM (the bench waits for "serving")."""
    nc = await nats.connect(nats_url, name=name)
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("serving", flush=True)
    await asyncio.gather(*(consume(js, stop, apply_one) for _ in range(concurrency)))
    await nc.close()
    print(f"stopped {counts}", flush=True)


def arguments(concurrency: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    return parser.parse_args()
