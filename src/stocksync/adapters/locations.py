"""Locations, where stock is held, as rows: not ledger changes themselves, so no movement is written."""

from __future__ import annotations

import msgspec
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.adapters.database import create_engine
from stocksync.domain.model import Location

_COLUMNS = ("location_id", "kind", "name", "pickup_enabled", "lat", "lon")


async def upsert_locations(engine: AsyncEngine, locations: list[Location]) -> None:
    if not locations:
        return
    statement = insert(t.locations)
    statement = statement.on_conflict_do_update(
        index_elements=[t.locations.c.location_id],
        set_={name: statement.excluded[name] for name in _COLUMNS[1:]} | {"updated_at": func.now()},
    )
    async with engine.begin() as conn:
        await conn.execute(statement, [msgspec.structs.asdict(location) for location in locations])


async def list_locations(engine: AsyncEngine) -> list[Location]:
    columns = [t.locations.c[name] for name in _COLUMNS]
    async with engine.connect() as conn:
        rows = await conn.execute(select(*columns).order_by(t.locations.c.location_id))
        return [Location(**row._asdict()) for row in rows]


async def pickup_location_ids(engine: AsyncEngine) -> list[str]:
    """The locations where customers may collect (what an ecommerce key may reserve at)."""
    query = select(t.locations.c.location_id).where(t.locations.c.pickup_enabled)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def stocked_skus(database_url: str, location_id: str, limit: int = 1000) -> list[str]:
    """The skus with stock on hand at the location: what a till there could plausibly sell (for demos)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = (
                select(t.positions.c.sku)
                .where(t.positions.c.location_id == location_id, t.positions.c.on_hand > 0)
                .order_by(t.positions.c.sku)
                .limit(limit)
            )
            return list((await conn.scalars(query)).all())
    finally:
        await engine.dispose()
