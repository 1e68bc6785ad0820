"""The baselines of the mixed and the hot sku runs, without the relay, each on a clone of its own: the naive
applier (``benchmarks/naive.py``: the product's own code, one event per transaction) and, for the mixed run, the
raw asyncpg applier (``benchmarks/naive_sql.py``: hand-written SQL, one event per transaction, 16 at once)."""

from __future__ import annotations

from benchmarks.group import Group
from benchmarks.measure import throughput
from benchmarks.plan import Bench


async def run_mixed(bench: Bench) -> None:
    await _run(bench, "naive", "naive mixed", bench.plan.naive_events)


async def run_mixed_sql(bench: Bench) -> None:
    await _run(bench, "naivesql", "raw asyncpg mixed", bench.plan.mixed_events // 5, applier="naive_sql")


async def run_hot(bench: Bench) -> None:
    await _run(bench, "naivehot", "naive hot sku", bench.plan.naive_hot_events, hot=True)


async def _run(
    bench: Bench, name: str, key: str, events: int, hot: bool = False, applier: str = "naive"
) -> None:
    """``events`` (prefix ``name``) applied one per transaction; it may take 20 times as long to settle."""
    plan = bench.plan
    async with Group(bench, name, applier, relay=False) as group:
        spec = plan.spec(events=events, prefix=name, hot=hot)
        await throughput(group, key, spec, timeout=plan.timeout_for(events * 20))
