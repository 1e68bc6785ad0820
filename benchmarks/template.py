"""The seeded template database every scenario clones: schema, locations, stock and API keys."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.infra import Infra, fetchval
from benchmarks.plan import Plan
from benchmarks.results import Results, say
from benchmarks.workload import WorkloadSpec, initial_stock, locations, seed_receipts

TEMPLATE = "bench_template"


async def seed_template(infra: Infra, plan: Plan, results: Results, log_dir: Path) -> tuple[Path, dict]:
    """The template, its stock written to ``stock.json`` (for the publisher and the HTTP requests); returns that
    file and the API keys."""
    stock = template_stock(plan)
    stock_file = log_dir / "stock.json"
    stock_file.write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in stock.items()}))
    results.seed = await build_template(infra, plan, stock)
    keys = results.seed.pop("keys")
    say(f"- template: {results.seed['positions']:,} positions seeded in {results.seed['seconds']} s")
    return stock_file, keys


def template_stock(plan: Plan) -> dict[tuple[str, str], int]:
    """Enough for every scenario that shares a clone: mixed (+ the latency sweep) and hot (+ its latency run)."""
    sweep_events = sum(int(rate * plan.sweep_seconds) for rate in plan.sweep_rates)
    mixed = initial_stock(plan.spec(events=plan.mixed_events + sweep_events))
    hot = initial_stock(
        plan.spec(events=plan.hot_events + int(plan.hot_latency_rate * plan.hot_latency_seconds), hot=True)
    )
    return {key: max(mixed.get(key, 0), hot.get(key, 0)) for key in mixed.keys() | hot.keys()}


async def build_template(infra: Infra, plan: Plan, stock: dict) -> dict:
    """Schema, locations, stock (receipts through the product's LedgerService) and API keys, in a template database."""
    from stocksync.adapters.database import create_engine
    from stocksync.migrate import migrate_database_async

    started = time.perf_counter()
    url = await infra.create_database(TEMPLATE)
    await migrate_database_async(url)
    engine = create_engine(url, pool_size=2)
    try:
        receipts = await _seed_stock(engine, plan.spec(), stock)
        keys = await _api_keys(engine)
    finally:
        await engine.dispose()
    positions = await fetchval(url, "SELECT count(*) FROM positions")
    return {
        "positions": positions,
        "units": sum(stock.values()),
        "receipts": receipts,
        "seconds": round(time.perf_counter() - started, 1),
        "keys": keys,
    }


async def _seed_stock(engine, spec: WorkloadSpec, stock: dict) -> int:
    """The locations, then the stock as receipts applied 20 to a transaction; returns how many receipts."""
    import msgspec

    from stocksync.adapters.locations import upsert_locations
    from stocksync.domain.events import decode_inbound
    from stocksync.domain.model import Location
    from stocksync.service.ledger_service import LedgerService

    await upsert_locations(engine, [Location(**asdict(loc)) for loc in locations(spec)])
    receipts = [decode_inbound(msgspec.json.encode(r)) for r in seed_receipts(spec, stock)]
    ledger = LedgerService(engine)
    for start in range(0, len(receipts), 20):
        await ledger.apply(receipts[start : start + 20])
    return len(receipts)


async def _api_keys(engine) -> dict:
    """An ``ecommerce`` and an ``admin`` key, or none where the product has no keys yet."""
    try:
        from stocksync.service.keys import create_key

        return {
            "ecommerce": await create_key(engine, "ecommerce", (), "bench web shop"),
            "admin": await create_key(engine, "admin", (), "bench admin"),
        }
    except ImportError:
        return {}
