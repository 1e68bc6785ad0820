"""The database baseline: pgbench's TPC-B-like script in a scratch database of the same PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from benchmarks.pgbench import run_pgbench
from benchmarks.plan import Bench
from benchmarks.results import say


async def run(bench: Bench) -> None:
    plan, infra = bench.plan, bench.infra
    say(f"- pgbench -s {plan.pgbench_scale}, -c 4 -j 2 -T {plan.pgbench_seconds}")
    url = await infra.create_database("bench_pgbench")
    result = await asyncio.to_thread(
        run_pgbench,
        infra.pgbench,
        url,
        scale=plan.pgbench_scale,
        clients=4,
        threads=2,
        seconds=plan.pgbench_seconds,
    )
    await infra.drop_database("bench_pgbench")
    bench.results.pgbench = asdict(result)
    say(f"  {result.tps:,.0f} tps")
