"""Reconciliation time on a big ledger: ``stocksync reconcile`` over N positions and M movements.

The ledger is bulk-seeded in SQL (`stocksync.adapters.bulk`, ``generate_series``: a few seconds for a million
rows) so that it is consistent: every position's ``on_hand`` is the sum of its movements' deltas and its
``version`` their count. Its bucket is not seeded, so reconcile reports every position's entry missing (exit 1);
the time measured is the whole command, process start included.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from benchmarks import infra as inf
from benchmarks.infra import Infra, fetch


def reconcile_available() -> str | None:
    """None when ``stocksync reconcile`` exists, else why not."""
    try:
        from stocksync.cli import _parser

        parser = _parser()
        commands = next(a for a in parser._actions if a.dest == "command")
        if "reconcile" not in commands.choices:  # type: ignore[operator]
            return "`stocksync reconcile` is not in the command line yet (issue 5)"
    except Exception as error:  # pragma: no cover - depends on work in progress
        return f"the command line could not be read: {error!r}"
    return None


async def measure_reconcile(infra: Infra, positions: int, movements: int, log_dir: Path) -> dict:
    why_not = reconcile_available()
    if why_not:
        return {
            "available": False,
            "summary": f"not available yet: {why_not}",
            "positions": positions,
            "movements": movements,
        }
    from stocksync.migrate import migrate_database_async

    url = await infra.create_database("bench_reconcile")
    await inf.reset_nats(infra.nats_url)  # empty streams: the inbound check has nothing from other scenarios
    try:
        await migrate_database_async(url)
        started = time.perf_counter()
        seeded_by = await _seed(url, positions, movements)
        seed_seconds = time.perf_counter() - started
        counts = (
            await fetch(
                url, "SELECT (SELECT count(*) FROM positions) AS p, (SELECT count(*) FROM movements) AS m"
            )
        )[0]
        report = log_dir / "reconcile-report.json"
        started = time.perf_counter()
        code = await inf.run_module(
            "stocksync.cli",
            ["reconcile", "--report", str(report)],
            log_dir / "reconcile.log",
            env=inf.stocksync_env(url, infra.nats_url, log_dir),
        )
        seconds = time.perf_counter() - started
        summary = _report_summary(report)
        inside = _checks_seconds(summary)
        return {
            "available": True,
            "report_summary": summary,
            "checks_seconds": inside,
            "positions": counts["p"],
            "movements": counts["m"],
            "seconds": seconds,
            "exit_code": code,
            "seed_seconds": seed_seconds,
            "seeded_by": seeded_by,
            "summary": f"{seconds:.1f} s for {counts['p']:,} positions and {counts['m']:,} movements (exit {code}"
            + (f"; {inside:.1f} s of checks, the rest is start-up" if inside is not None else "")
            + ")",
        }
    finally:
        await infra.drop_database("bench_reconcile")


async def _seed(url: str, positions: int, movements: int) -> str:
    """The ledger seeded by the product's own bulk seeding; which seeding it was, for the report."""
    from stocksync.adapters.bulk import seed_bulk

    await seed_bulk(url, positions=positions, movements=movements)
    return f"{seed_bulk.__module__}.{seed_bulk.__name__}"


def _report_summary(report: Path) -> dict:
    """The summary of reconcile's JSON report ({} without one)."""
    if report.exists():
        try:
            return json.loads(report.read_text()).get("summary", {})
        except ValueError:
            pass
    return {}


def _checks_seconds(summary: dict) -> float | None:
    """The time the report says its checks took (``finished_at - started_at``), if it says."""
    if not (summary.get("started_at") and summary.get("finished_at")):
        return None
    started_at, finished_at = (
        datetime.fromisoformat(summary[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at")
    )
    return (finished_at - started_at).total_seconds()
