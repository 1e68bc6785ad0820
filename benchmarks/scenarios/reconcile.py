"""``stocksync reconcile`` timed on a bulk-seeded ledger (``benchmarks/reconcile.py``)."""

from __future__ import annotations

from benchmarks.plan import Bench
from benchmarks.reconcile import measure_reconcile
from benchmarks.results import say


async def run(bench: Bench) -> None:
    plan, results = bench.plan, bench.results
    results.reconcile = await measure_reconcile(
        bench.infra, plan.recon_positions, plan.recon_movements, bench.log_dir
    )
    say(f"- reconcile: {results.reconcile.get('summary')}")
