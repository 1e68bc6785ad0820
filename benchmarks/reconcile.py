"""Reconciliation time on a big ledger: ``stocksync reconcile`` over N positions and M movements.

The ledger is bulk-seeded in SQL (``generate_series``, a few seconds for a million rows) so that it is
consistent: every position's ``on_hand`` is the sum of its movements' deltas and its ``version`` their count, and
every movement's event is in ``processed_events``. A clean reconciliation therefore exits 0; the time measured
is the whole command, process start included.
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


def _seed_bulk():
    """The product's own bulk seeding, when reconciliation (issue 5) provides one."""
    for module, name in (
        ("stocksync.service.reconcile", "seed_bulk"),
        ("stocksync.service.reconciliation", "seed_bulk"),
        ("stocksync.service.seeding", "seed_bulk"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        except (ImportError, AttributeError):
            continue
    return None


SEED_SQL = """
INSERT INTO locations (location_id, kind, name, pickup_enabled)
SELECT 'rl-' || lpad(l::text, 3, '0'), 'store', 'Reconcile store ' || l, true FROM generate_series(1, {locations}) l;

INSERT INTO positions (location_id, sku, on_hand, reserved, damaged, safety_stock, version, updated_at)
SELECT 'rl-' || lpad(l::text, 3, '0'), 'RSKU-' || lpad(s::text, 6, '0'), 0, 0, 0, 0, 0, now()
FROM generate_series(1, {locations}) l, generate_series(1, {skus}) s;

INSERT INTO movements (event_id, type, location_id, sku, on_hand_delta, reserved_delta, damaged_delta,
                       occurred_at, recorded_at)
SELECT 'recon:' || g,
       CASE WHEN g < {positions} THEN 'receipt' ELSE 'sale' END,
       'rl-' || lpad((1 + (g % {positions}) / {skus})::text, 3, '0'),
       'RSKU-' || lpad((1 + (g % {positions}) % {skus})::text, 6, '0'),
       CASE WHEN g < {positions} THEN 100 ELSE -1 END, 0, 0,
       timestamptz '2026-11-01 06:00Z' + g * interval '1 millisecond',
       timestamptz '2026-11-01 06:00Z' + g * interval '1 millisecond'
FROM generate_series(0, {movements} - 1) g;

INSERT INTO processed_events (event_id, body_hash, type, location_id, outcome, recorded_at)
SELECT event_id, '\\x00'::bytea, type, location_id, 'applied', recorded_at FROM movements WHERE event_id LIKE 'recon:%';

UPDATE positions p SET on_hand = m.total, version = m.n
FROM (SELECT location_id, sku, sum(on_hand_delta) AS total, count(*) AS n FROM movements GROUP BY 1, 2) m
WHERE p.location_id = m.location_id AND p.sku = m.sku;

ANALYZE;
"""


async def seed_sql(url: str, positions: int, movements: int) -> None:
    locations = 20
    skus = positions // locations
    await inf.execute(
        url, SEED_SQL.format(locations=locations, skus=skus, positions=locations * skus, movements=movements)
    )


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
    """The ledger seeded by reconciliation's own bulk seeding (issue 5) if it has one, else by SEED_SQL; which."""
    product_seed = _seed_bulk()
    if product_seed is None:
        await seed_sql(url, positions, movements)
        return "benchmarks.reconcile.SEED_SQL"
    await product_seed(url, positions=positions, movements=movements)
    return f"{product_seed.__module__}.{product_seed.__name__}"


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
