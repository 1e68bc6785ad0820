"""Group commit: concurrent requests share transactions, with the same outcomes as one at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.domain.errors import InsufficientStock
from stocksync.domain.events import Command
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_ledger import receipt, reserve, sale, store, unique


class CountingLedger(GroupCommitLedger):
    """Counts the transactions; one event carrying `reference="poison"` makes its transaction fail."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.transactions = 0

    async def _apply_once(self, events: Sequence[Command], hashes: list[bytes]):
        self.transactions += 1
        if any(getattr(event, "reference", None) == "poison" for event in events):
            raise RuntimeError("a transaction this event is in cannot commit")
        return await super()._apply_once(events, hashes)


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url)
    yield engine
    await engine.dispose()


async def _on_hand_and_reserved(engine: AsyncEngine, location_id: str, sku: str) -> tuple[int, int]:
    p = t.positions.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(p.on_hand, p.reserved).where(p.location_id == location_id, p.sku == sku)
            )
        ).one()
    return row.on_hand, row.reserved


async def test_a_burst_of_reservations_shares_transactions_and_holds_exactly_what_is_available(
    engine: AsyncEngine,
) -> None:
    location_id, sku = unique("store"), unique("sku")
    await upsert_locations(engine, [store(location_id)])
    ledger = CountingLedger(engine)
    await ledger.apply([receipt(location_id, {sku: 10})])
    results = await asyncio.gather(*(ledger.apply([reserve(location_id, {sku: 1})]) for _ in range(100)))
    outcomes = [result.outcomes for result in results]
    assert all(len(answer) == 1 for answer in outcomes)  # each caller gets its own outcome, no one else's
    kinds = [answer[0].outcome for answer in outcomes]
    assert kinds.count("applied") == 10 and kinds.count("rejected") == 90
    assert {answer[0].error for answer in outcomes if answer[0].outcome == "rejected"} == {
        InsufficientStock.code
    }
    assert await _on_hand_and_reserved(engine, location_id, sku) == (10, 10)
    assert ledger.transactions < 50, "a burst must share transactions"


async def test_one_request_that_cannot_commit_does_not_fail_the_others(engine: AsyncEngine) -> None:
    location_id, sku = unique("store"), unique("sku")
    await upsert_locations(engine, [store(location_id)])
    ledger = CountingLedger(engine)
    await ledger.apply([receipt(location_id, {sku: 10})])
    requests = [[sale(location_id, {sku: 1})] for _ in range(5)]
    requests.insert(2, [sale(location_id, {sku: 1}, reference="poison")])
    answers = await asyncio.gather(*(ledger.apply(events) for events in requests), return_exceptions=True)
    failed = [answer for answer in answers if isinstance(answer, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], RuntimeError)
    assert [a.outcomes[0].outcome for a in answers if not isinstance(a, BaseException)] == ["applied"] * 5
    assert await _on_hand_and_reserved(engine, location_id, sku) == (5, 0)
    async with engine.connect() as conn:
        movements = await conn.scalar(
            select(func.count()).select_from(t.movements).where(t.movements.c.location_id == location_id)
        )
    assert movements == 6  # the receipt and five sales: nothing of the poisoned request, nothing twice
