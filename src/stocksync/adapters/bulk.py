"""A large, consistent ledger in seconds, for benchmarks and tests of the reconciliation at scale.

It bypasses the event path on purpose (a million events through it would take minutes): rows are generated
by PostgreSQL with ``INSERT ... SELECT generate_series``, movement ``k`` belonging to position ``k % positions``,
and each position's numbers are the sums of its movements, so the result reconciles clean.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import create_engine
from stocksync.clock import utc_now


def _location(i: str) -> str:
    return f"CAST(:prefix AS text) || '-' || lpad((({i}) % :locations)::text, 4, '0')"


def _sku(i: str) -> str:
    return f"'SKU-' || CAST(:prefix AS text) || '-' || lpad((({i}) / :locations)::text, 7, '0')"


# A receipt of 50 opens each position; then adjusts of -3..+7, never zero.
_DELTA = "CASE WHEN k < :positions THEN 50 WHEN k % 2 = 0 THEN 1 + k % 7 ELSE -1 - k % 3 END"

_LOCATIONS = text(
    f"""
    INSERT INTO locations (location_id, kind, name)
    SELECT {_location("l")}, 'store', 'bulk store ' || l FROM generate_series(0, :locations - 1) AS l
    ON CONFLICT DO NOTHING
    """
)
_POSITIONS = text(
    f"""
    INSERT INTO positions (location_id, sku, on_hand, version, updated_at)
    SELECT {_location("i")}, {_sku("i")}, sum(d), count(*), :now
    FROM (SELECT k % :positions AS i, {_DELTA} AS d FROM generate_series(0, :movements - 1) AS k) AS g
    GROUP BY i
    """
)
_MOVEMENTS = text(
    f"""
    INSERT INTO movements (event_id, type, location_id, sku, on_hand_delta, reserved_delta, damaged_delta, reason,
                           occurred_at, recorded_at)
    SELECT CAST(:prefix AS text) || ':' || k, CASE WHEN k < :positions THEN 'receipt' ELSE 'adjust' END,
           {_location("k % :positions")}, {_sku("k % :positions")}, {_DELTA}, 0, 0,
           CASE WHEN k < :positions THEN NULL ELSE 'correction' END,
           CAST(:start AS timestamptz) + make_interval(secs => k),
           CAST(:start AS timestamptz) + make_interval(secs => k)
    FROM generate_series(0, :movements - 1) AS k
    """
)


async def seed_bulk(
    engine: AsyncEngine | str,
    *,
    positions: int = 100_000,
    movements: int = 1_000_000,
    locations: int = 100,
    prefix: str = "bulk",
    now: datetime | None = None,
) -> None:
    """Insert ``positions`` positions over ``locations`` stores and ``movements`` movements that add up.

    ``engine`` may be a ``postgresql://`` URL (for scripts). Location ids are ``<prefix>-0000``…, skus
    ``SKU-<prefix>-0000000``…; use another prefix to seed again in the same database. Movements occurred one
    second apart, ending before ``now``.
    """
    if movements < positions:
        raise ValueError("every position needs a movement: movements >= positions")
    if isinstance(engine, str):
        owned = create_engine(engine, pool_size=1)
        try:
            return await seed_bulk(
                owned, positions=positions, movements=movements, locations=locations, prefix=prefix, now=now
            )
        finally:
            await owned.dispose()
    now = now or utc_now()
    params = {
        "prefix": prefix,
        "positions": positions,
        "movements": movements,
        "locations": locations,
        "now": now,
        "start": now - timedelta(seconds=movements + 60),
    }
    async with engine.begin() as conn:
        for statement in (_LOCATIONS, _POSITIONS, _MOVEMENTS):
            await conn.execute(statement, params)
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE locations, positions, movements"))
        await conn.commit()
