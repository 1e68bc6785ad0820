"""One hot sku (every event on the same position) applied by the worker, published as fast as possible; then
its latency at ``plan.hot_latency_rate`` on the same clone."""

from __future__ import annotations

from benchmarks.group import Group
from benchmarks.measure import latency_run, throughput
from benchmarks.plan import Bench


async def run(bench: Bench) -> None:
    plan = bench.plan
    rate = plan.hot_latency_rate
    async with Group(bench, "hot", "worker") as group:
        await throughput(group, "hot sku", plan.spec(events=plan.hot_events, prefix="hot", hot=True))
        events = int(rate * plan.hot_latency_seconds)
        spec = plan.spec(events=events, prefix="hotlat", hot=True, duplicate_rate=0.0)
        await latency_run(group, f"hot sku latency @ {rate:,}/s", spec, rate)
