"""The mixed workload applied by the worker (with the relay), published as fast as possible; then the latency
sweep on the same clone: each rate of ``plan.sweep_rates`` offered for ``plan.sweep_seconds``."""

from __future__ import annotations

from benchmarks.group import Group
from benchmarks.measure import latency_run, throughput
from benchmarks.plan import Bench


async def run(bench: Bench) -> None:
    plan = bench.plan
    async with Group(bench, "mixed", "worker") as group:
        await throughput(group, "mixed", plan.spec(events=plan.mixed_events, prefix="mix"), memory=True)
        for rate in plan.sweep_rates:
            spec = plan.spec(events=int(rate * plan.sweep_seconds), prefix=f"lat{rate}", duplicate_rate=0.0)
            scenario = await latency_run(group, f"latency @ {rate:,}/s", spec, rate)
            bench.results.sweep.append(
                {"offered": rate, "reached": scenario["publisher"]["publish_rate"], **scenario["latency_ms"]}
            )
