"""`GatheredReads`: reads arriving while one is in the database share the next statement, and one read's
fate (an error, its request gone) is its group's or its own, never a later read's."""

from __future__ import annotations

import asyncio

import pytest

from stocksync.adapters.queries import GatheredReads
from stocksync.domain.model import Position


class Database:
    """Stands in for the positions table: each statement is held until released, and remembered."""

    def __init__(self, fail: set[int] = frozenset()) -> None:
        self.statements: list[list[tuple[str, str]]] = []
        self.fail, self.release = fail, asyncio.Event()

    async def fetch(self, keys: list[tuple[str, str]]) -> dict:
        self.statements.append(keys)
        await self.release.wait()
        if len(self.statements) in self.fail:
            raise ConnectionError("the database went away")
        return {key: Position(location_id=key[0], sku=key[1], on_hand=len(key[1])) for key in keys}


async def turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_arriving_during_a_statement_share_the_next_one() -> None:
    db = Database()
    reads = GatheredReads(db.fetch)
    alone = asyncio.ensure_future(reads.read([("s1", "a")]))
    await turns()
    later = [asyncio.ensure_future(reads.read([("s1", "b" * n)])) for n in range(1, 4)]
    await turns()
    db.release.set()

    assert set((await alone).keys()) == {("s1", "a")}
    for n, read in enumerate(later, 1):
        assert (await read)[("s1", "b" * n)].on_hand == n
    assert db.statements == [[("s1", "a")], [("s1", "b"), ("s1", "bb"), ("s1", "bbb")]]


async def test_a_group_is_at_most_max_keys_unless_one_read_asks_more() -> None:
    db = Database()
    db.release.set()
    reads = GatheredReads(db.fetch, max_keys=3)
    asked = [[("s", f"{n}-{i}") for i in range(size)] for n, size in enumerate([2, 2, 1, 5])]
    await asyncio.gather(*(reads.read(keys) for keys in asked))
    assert [len(keys) for keys in db.statements] == [2, 3, 5]


async def test_an_error_fails_its_group_only_and_a_read_whose_request_went_away_is_skipped() -> None:
    db = Database(fail={2})
    reads = GatheredReads(db.fetch)
    holding = asyncio.ensure_future(reads.read([("s", "x")]))
    await turns()
    failing = [asyncio.ensure_future(reads.read([("s", f"f{n}")])) for n in range(2)]
    gone = asyncio.ensure_future(reads.read([("s", "gone")]))
    await turns()
    gone.cancel()
    db.release.set()
    await holding
    for read in failing:
        with pytest.raises(ConnectionError):
            await read
    assert gone.cancelled()
    assert (await reads.read([("s", "after")]))[("s", "after")].on_hand == 5


async def test_reads_waiting_when_the_process_stops_are_cancelled_not_left_waiting() -> None:
    reads = GatheredReads(Database().fetch)
    held = asyncio.ensure_future(reads.read([("s", "held")]))
    await turns()
    queued = asyncio.ensure_future(reads.read([("s", "queued")]))
    await turns()
    reads._gathering._server.cancel()  # as the loop cancels its tasks at shutdown
    await turns()
    assert held.cancelled() and queued.cancelled()
