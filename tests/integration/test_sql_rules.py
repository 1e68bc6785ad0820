"""Where SQL applies a ledger rule for speed, it agrees with the core's function on generated cases:
which holds are due (`is_due`, the sweeper's query) and a position's on-hand since an instant
(`on_hand_since`, what a count does not see)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.adapters.database import create_engine
from stocksync.adapters.ledger_store import on_hand_after
from stocksync.adapters.locations import upsert_locations
from stocksync.adapters.reservations import due_reservations
from stocksync.domain.ledger import is_due, on_hand_since
from stocksync.domain.model import Movement, Reservation
from tests.support_ledger import T0, store, unique

CASES = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
seconds = st.integers(-3, 3)  # around the instant asked about, the boundary included


@pytest.fixture(scope="module")
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def new_location(engine: AsyncEngine) -> str:
    location_id = unique("store")
    await upsert_locations(engine, [store(location_id)])
    return location_id


@CASES
@given(holds=st.lists(st.tuples(st.sampled_from(["held", "collected", "cancelled", "expired"]), seconds)))
async def test_the_sweepers_due_holds_are_the_cores(
    engine: AsyncEngine, holds: list[tuple[str, int]]
) -> None:
    location_id = await new_location(engine)
    reservations = [
        Reservation(
            reservation_id=f"res-{i}",
            location_id=location_id,
            channel="staff",
            status=status,  # type: ignore[arg-type]
            lines=(),
            created_at=T0 - timedelta(hours=1),
            expires_at=T0 + timedelta(seconds=offset),
            event_id=f"ev-{i}",
        )
        for i, (status, offset) in enumerate(holds)
    ]
    async with engine.begin() as conn:
        if reservations:
            rows = [{**_reservation(r), "updated_at": T0} for r in reservations]
            await conn.execute(insert(t.reservations), rows)
        found = await due_reservations(conn, T0, limit=100_000)
        await conn.rollback()  # the rows stay this case's own
    assert {key for key in found if key[0] == location_id} == {r.key for r in reservations if is_due(r, T0)}


@CASES
@given(
    moves=st.lists(st.tuples(seconds, st.integers(-5, 5)), max_size=12),
    probes=st.lists(seconds, min_size=1, max_size=4),
)
async def test_on_hand_since_in_sql_is_the_cores(
    engine: AsyncEngine, moves: list[tuple[int, int]], probes: list[int]
) -> None:
    location_id, sku = await new_location(engine), "SKU-1"
    movements = [
        Movement(
            event_id=f"ev-{i}",
            type="adjust",
            location_id=location_id,
            sku=sku,
            occurred_at=T0 + timedelta(seconds=offset),
            on_hand_delta=delta,
            reserved_delta=0,
            damaged_delta=0,
        )
        for i, (offset, delta) in enumerate(moves)
    ]
    asked = [((location_id, sku), T0 + timedelta(seconds=offset)) for offset in probes]
    async with engine.begin() as conn:
        await conn.execute(insert(t.positions), [{"location_id": location_id, "sku": sku, "updated_at": T0}])
        if movements:
            await conn.execute(
                insert(t.movements),
                [{**_fields(m), "recorded_at": T0} for m in movements],
            )
        sums = await on_hand_after(conn, asked)
        await conn.rollback()
    assert sums == {probe: on_hand_since(movements, *probe) for probe in asked}


def _fields(movement: Movement) -> dict:
    return {name: getattr(movement, name) for name in movement.__struct_fields__}


def _reservation(r: Reservation) -> dict:
    return {name: getattr(r, name) for name in r.__struct_fields__ if name != "lines"}
