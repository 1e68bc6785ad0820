"""The baseline: a naive applier that gives every event its own transaction (``LedgerService.apply([event])``).

``python -m benchmarks.naive --database URL --nats URL [--concurrency 4]``

It consumes the same durable consumer as the product's worker (which is not running meanwhile), decodes and
validates with the product's own code, applies one event per transaction through the product's own
`LedgerService` (so the same locks, the same rules, the same outbox rows), and acknowledges after the commit.
``--concurrency`` tasks do this side by side (4, like pgbench's clients), each with its own connection. It lives
in the bench, not in the product: it is what the batching worker is measured against. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import nats

from stocksync.adapters.database import create_engine
from stocksync.domain.errors import Unavailable
from stocksync.messaging.worker import Refused, decode_message
from stocksync.service.ledger_service import LedgerService
from stocksync.wire import IN_STREAM, WORKER_CONSUMER


async def consume(js, ledger: LedgerService, stop: asyncio.Event, counts: dict[str, int]) -> None:
    sub = await js.pull_subscribe_bind(WORKER_CONSUMER, IN_STREAM)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except TimeoutError:
            continue
        for msg in msgs:
            try:
                event = decode_message(msg.subject, msg.headers, msg.data)
            except Refused:
                counts["refused"] += 1
                await msg.ack()
                continue
            while True:
                try:
                    await ledger.apply([event])
                    break
                except Unavailable:
                    await asyncio.sleep(0.05)
            await msg.ack()
            counts["applied"] += 1


async def run(args: argparse.Namespace) -> None:
    engine = create_engine(args.database, pool_size=args.concurrency)
    ledger = LedgerService(engine)
    nc = await nats.connect(args.nats, name="stocksync-bench-naive")
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    counts = {"applied": 0, "refused": 0}
    print("serving", flush=True)
    await asyncio.gather(*(consume(js, ledger, stop, counts) for _ in range(args.concurrency)))
    await nc.close()
    await engine.dispose()
    print(f"stopped {counts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    from stocksync.logs import configure_logging

    configure_logging("json", "warning")  # the product logs every batch at info: here a batch is one event
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
