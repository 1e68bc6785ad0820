"""Rule 7: a held reservation past its expiry is expired by the sweeper, with no request arriving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.clock import ManualClock
from stocksync.service.ledger_service import LedgerService
from stocksync.service.sweeper import ExpirySweeper
from tests.support_ledger import receipt, reserve, store, unique


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url, pool_size=4)
    yield engine
    await engine.dispose()


async def _reserved(engine: AsyncEngine, location_id: str, sku: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(
            select(t.positions.c.reserved).where(
                t.positions.c.location_id == location_id, t.positions.c.sku == sku
            )
        )


async def _reserved_is(engine: AsyncEngine, location_id: str, sku: str, expected: int) -> bool:
    return await _reserved(engine, location_id, sku) == expected


async def _until(condition, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def _held_reservation(
    engine: AsyncEngine, ledger: LedgerService, ttl_seconds: int = 60
) -> tuple[str, str, str]:
    location_id, sku = unique("store"), unique("sku")
    await upsert_locations(engine, [store(location_id)])
    reservation = reserve(location_id, {sku: 3}, ttl_seconds=ttl_seconds)
    await ledger.apply([receipt(location_id, {sku: 10}), reservation])
    assert await _reserved(engine, location_id, sku) == 3
    return location_id, sku, reservation.reservation_id


async def test_a_60s_reservation_is_released_within_5s_of_the_clock_passing_its_expiry(
    engine: AsyncEngine,
) -> None:
    clock = ManualClock()
    ledger = LedgerService(engine, clock=clock)
    location_id, sku, reservation_id = await _held_reservation(engine, ledger)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(ExpirySweeper(engine, ledger, interval_s=0.2).run(stop))
    try:
        await asyncio.sleep(0.5)
        assert await _reserved(engine, location_id, sku) == 3, "not due yet: nothing may be released"
        clock.advance(seconds=61)
        released = await _until(lambda: _reserved_is(engine, location_id, sku, 0), seconds=5)
    finally:
        stop.set()
        await sweeper
    assert released
    async with engine.connect() as conn:
        status = await conn.scalar(
            select(t.reservations.c.status).where(t.reservations.c.reservation_id == reservation_id)
        )
    assert status == "expired"


async def test_several_sweepers_expire_each_reservation_once(engine: AsyncEngine) -> None:
    clock = ManualClock()
    ledger = LedgerService(engine, clock=clock)
    held = [await _held_reservation(engine, ledger) for _ in range(5)]
    clock.advance(minutes=2)
    sweepers = [ExpirySweeper(engine, LedgerService(engine, clock=clock)) for _ in range(4)]
    expired = await asyncio.gather(*(sweeper.sweep_once() for sweeper in sweepers for _ in range(3)))
    assert sum(expired) >= len(held)
    ids = [reservation_id for _, _, reservation_id in held]
    async with engine.connect() as conn:
        releases = await conn.scalar(
            select(func.count())
            .select_from(t.movements)
            .where(t.movements.c.type == "expire", t.movements.c.reservation_id.in_(ids))
        )
    assert releases == len(held)  # one release per reservation line, however many sweepers ran
    for location_id, sku, _ in held:
        assert await _reserved(engine, location_id, sku) == 0


async def test_a_reservation_not_yet_due_is_left_held(engine: AsyncEngine) -> None:
    clock = ManualClock()
    ledger = LedgerService(engine, clock=clock)
    location_id, sku, _ = await _held_reservation(engine, ledger, ttl_seconds=600)
    clock.advance(seconds=599)
    await ExpirySweeper(engine, ledger).sweep_once()
    assert await _reserved(engine, location_id, sku) == 3
    clock.advance(seconds=2)
    assert await ExpirySweeper(engine, ledger).sweep_once() == 1
    assert await _reserved(engine, location_id, sku) == 0


async def test_the_sweeper_expires_the_due_hold_of_an_id_and_not_the_same_id_at_another_store(
    engine: AsyncEngine,
) -> None:
    """A reservation is its location and id: expiring one store's hold leaves the other store's alone."""
    clock = ManualClock()
    ledger = LedgerService(engine, clock=clock)
    short, long, sku, rid = unique("store"), unique("store"), unique("sku"), unique("res")
    await upsert_locations(engine, [store(short), store(long)])
    await ledger.apply(
        [
            receipt(short, {sku: 10}),
            receipt(long, {sku: 10}),
            reserve(short, {sku: 3}, reservation_id=rid, ttl_seconds=60, channel="staff"),
            reserve(long, {sku: 4}, reservation_id=rid, ttl_seconds=600),
        ]
    )
    clock.advance(seconds=61)

    expired = await ExpirySweeper(engine, ledger).sweep_once()

    assert expired >= 1
    assert [await _reserved(engine, shop, sku) for shop in (short, long)] == [0, 4]
    r = t.reservations.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(r.location_id, r.status).where(r.reservation_id == rid))
        statuses = dict(rows.all())
    assert statuses == {short: "expired", long: "held"}
