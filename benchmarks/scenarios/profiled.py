"""``--profile SECONDS``: a separate mixed run with py-spy on the worker and the relay (3 to 60 s of it)."""

from __future__ import annotations

from benchmarks.group import Group
from benchmarks.measure import throughput
from benchmarks.plan import Bench


async def run(bench: Bench) -> None:
    plan = bench.plan
    seconds = max(3.0, min(60.0, bench.profile))
    async with Group(bench, "profile", "worker") as group:
        bench.results.notes.append(
            f"profile: py-spy at 100 Hz on the worker and the relay for {seconds:g} s of a separate "
            f"mixed run of {plan.mixed_events:,} events published as fast as possible"
        )
        spec = plan.spec(events=plan.mixed_events, prefix="prof")
        await throughput(group, "profiled mixed", spec, profile_s=seconds)
