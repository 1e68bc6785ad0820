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

from nats.aio.msg import Msg

from benchmarks.pull import arguments, serve
from stocksync.adapters.database import create_engine
from stocksync.domain.errors import Unavailable
from stocksync.messaging.worker import Refused, decode_message
from stocksync.service.ledger_service import LedgerService


async def run(args: argparse.Namespace) -> None:
    engine = create_engine(args.database, pool_size=args.concurrency)
    ledger = LedgerService(engine)
    counts = {"applied": 0, "refused": 0}

    async def apply_one(msg: Msg) -> None:
        try:
            event = decode_message(msg.subject, msg.headers, msg.data)
        except Refused:
            counts["refused"] += 1
            return
        while True:
            try:
                await ledger.apply([event])
                break
            except Unavailable:
                await asyncio.sleep(0.05)
        counts["applied"] += 1

    await serve(args.nats, "stocksync-bench-naive", args.concurrency, apply_one, counts)
    await engine.dispose()


def main() -> None:
    args = arguments(concurrency=4)
    from stocksync.logs import configure_logging

    configure_logging("json", "warning")  # the product logs every batch at info: here a batch is one event
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
