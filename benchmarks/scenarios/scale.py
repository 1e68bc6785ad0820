"""Two workers and two relays against one of each (issue 13, point 6), the same mixed events on clones of their
own, back to back: the second pair shares the durable consumer and the relay's lead (one publishes, one stands
by), so together they should lose nothing, and nothing between them should grow: lock waits sampled from
``pg_stat_activity`` every 0.2 s (first half against second half of the run), deadlocks and rolled-back
transactions from ``pg_stat_database``, and the WAL written (for ``docs/scaling.md``'s arithmetic)."""

from __future__ import annotations

import asyncio
import statistics

import asyncpg

from benchmarks.group import Group
from benchmarks.infra import asyncpg_url
from benchmarks.measure import throughput
from benchmarks.plan import Bench
from benchmarks.results import say
from benchmarks.scenarios.mixed import caught_up

SINGLE = "mixed, 1 worker + 1 relay"
DOUBLE = "mixed, 2 workers + 2 relays"

WAITING = """SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity
    WHERE datname = current_database()"""
WAL_SINCE = "SELECT pg_wal_lsn_diff($1, $2)"  # the whole server's WAL: the run is all it does meanwhile
TOTALS = """SELECT deadlocks, xact_rollback, pg_current_wal_lsn() AS wal FROM pg_stat_database
    WHERE datname = current_database()"""


class Contention:
    """What the appliers waited for in PostgreSQL while the block ran (one connection of its own)."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        self.url, self.interval = url, interval
        self.waiting: list[int] = []
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Contention:
        self.connection = await asyncpg.connect(asyncpg_url(self.url), timeout=30)
        self.start = await self.connection.fetchrow(TOTALS)
        self.task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while not self.stop.is_set():  # not cancelled: a query cut short would leave the connection busy
            self.waiting.append(await self.connection.fetchval(WAITING))
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task
        await asyncio.sleep(0.6)  # the statistics collector reports a finished transaction within 0.5 s
        end = await self.connection.fetchrow(TOTALS)
        half = len(self.waiting) // 2
        mean = lambda xs: round(statistics.fmean(xs), 2) if xs else 0.0  # noqa: E731
        self.summary = {
            "samples": len(self.waiting),
            "lock_waiting_mean": mean(self.waiting),
            "lock_waiting_first_half": mean(self.waiting[:half]),
            "lock_waiting_second_half": mean(self.waiting[half:]),
            "lock_waiting_max": max(self.waiting, default=0),
            "deadlocks": end["deadlocks"] - self.start["deadlocks"],
            "rolled_back": end["xact_rollback"] - self.start["xact_rollback"],
            "wal_bytes": int(await self.connection.fetchval(WAL_SINCE, end["wal"], self.start["wal"])),
        }
        await self.connection.close()


async def run(bench: Bench) -> None:
    plan = bench.plan
    for key, copies in ((SINGLE, 1), (DOUBLE, 2)):
        async with Group(bench, f"scale{copies}", "worker", workers=copies, relays=copies) as group:
            await caught_up(group)
            async with Contention(group.url) as contention:
                spec = plan.spec(events=plan.mixed_events // 2, prefix=f"scale{copies}")
                scenario = await throughput(group, key, spec)
            scenario["contention"] = found = contention.summary
            say(
                f"  lock waits {found['lock_waiting_first_half']} → {found['lock_waiting_second_half']} "
                f"backends (max {found['lock_waiting_max']}), {found['deadlocks']} deadlocks, "
                f"{found['rolled_back']} transactions rolled back, "
                f"{found['wal_bytes'] / spec.events:,.0f} bytes of WAL per event"
            )
