"""``--profile SECONDS``: separate mixed runs with py-spy on the worker and the relay (3 to 60 s of each): one
without channels, one with the channels of ``mixed.py`` (what channel publishing adds to the relay's pass)."""

from __future__ import annotations

from benchmarks.group import Group
from benchmarks.measure import throughput
from benchmarks.plan import Bench
from benchmarks.scenarios.mixed import bench_channels, define_channels


async def run(bench: Bench) -> None:
    plan = bench.plan
    seconds = max(3.0, min(60.0, bench.profile))
    bench.results.notes.append(
        f"profile: py-spy at 100 Hz on the worker and the relay for {seconds:g} s of each of two separate "
        f"mixed runs of {plan.mixed_events:,} events published as fast as possible, without and with channels"
    )
    async with Group(bench, "profile", "worker") as group:
        spec = plan.spec(events=plan.mixed_events, prefix="prof")
        await throughput(group, "profiled mixed", spec, profile_s=seconds)
    async with Group(bench, "profile_channels", "worker") as group:
        await define_channels(group, bench_channels(plan.spec()))
        spec = plan.spec(events=plan.mixed_events, prefix="profch")
        await throughput(
            group,
            "profiled mixed, with channels",
            spec,
            profile_s=seconds,
            profile_label=" during the mixed run with channels",
        )
