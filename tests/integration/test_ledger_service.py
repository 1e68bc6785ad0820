"""`LedgerService` on a real PostgreSQL: the same rules as the pure core, exactly once, under concurrency,
with the outbox written alongside and the database itself guarding the ledger.

Every test uses its own locations, skus, reservation and event ids: the session shares one database.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics
from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.adapters.memory_store import MemoryLedgerStore
from stocksync.adapters.outbox import unpacked
from stocksync.clock import ManualClock
from stocksync.domain.events import Command
from stocksync.domain.model import Position
from stocksync.service.ledger_service import LedgerService, body_hash
from stocksync.wire import OUTBOX_BUNDLE
from tests.support_ledger import (
    T0,
    adjust,
    apply,
    at,
    cancel,
    collect,
    count,
    expire,
    new_ledger,
    numbers,
    other_body,
    position_numbers,
    receipt,
    reserve,
    return_,
    safety_stock,
    sale,
    store,
    unique,
)


@pytest.fixture(scope="module")
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url, pool_size=25)
    yield engine
    await engine.dispose()


async def new_locations(engine: AsyncEngine | None, count: int = 1) -> list[str]:
    ids = [unique("store") for _ in range(count)]
    if engine is not None:
        await upsert_locations(engine, [store(location_id) for location_id in ids])
    return ids


async def rows(engine: AsyncEngine, sql: str, **params) -> list:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def stored_positions(engine: AsyncEngine, *location_ids: str) -> dict[tuple[str, str], dict[str, int]]:
    found = await rows(
        engine,
        "SELECT location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at"
        " FROM positions WHERE location_id = ANY(:ids)",
        ids=list(location_ids),
    )
    return {(r.location_id, r.sku): position_numbers(Position(**r._asdict())) for r in found}


async def movements_of(engine: AsyncEngine, event_id: str) -> list:
    return await rows(engine, "SELECT * FROM movements WHERE event_id = :e ORDER BY id", e=event_id)


APPLIED = ("applied", None)


def service(engine: AsyncEngine, clock: ManualClock | None = None) -> LedgerService:
    return LedgerService(engine, clock=clock or ManualClock(T0))


# -- one scenario, three backends -------------------------------------------------------------------------


@dataclass(frozen=True)
class Advance:
    """A step of a scenario: the clock moves on (a new transaction for the batch backend)."""

    seconds: int


@dataclass
class Result:
    positions: dict[tuple[str, str], dict[str, int]]
    outcomes: list[tuple[str, str | None]] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)


class LedgerScenarios:
    """Business scenarios with their expected final numbers. Subclasses say where the events are applied:
    the same scenario must leave the same positions, outcomes and reservation statuses in every backend."""

    async def run(self, engine: AsyncEngine | None, steps: Sequence[Command | Advance]) -> Result:
        raise NotImplementedError

    async def test_facts_move_on_hand_and_damaged(self, engine):
        (shop,) = await new_locations(engine)
        a, b = unique("sku"), unique("sku")
        result = await self.run(
            engine,
            [
                receipt(shop, {a: 10, b: 5}, at=0),
                sale(shop, {a: 3}, at=1),
                sale(shop, {b: 4}, at=2),
                return_(shop, {a: 1}, at=3),
                return_(shop, {a: 2}, disposition="damaged", at=4),
                adjust(shop, {b: -1}, reason="shrinkage", at=5),
                adjust(shop, {a: 2}, reason="found", at=6),
                sale(shop, {b: 3}, at=7),
            ],
        )
        assert result.positions == {
            (shop, a): numbers(10, damaged=2, available=10, version=5),
            (shop, b): numbers(-3, available=0, version=4),
        }
        assert result.outcomes == [APPLIED] * 8

    async def test_counts_keep_later_changes_and_supersede_earlier_ones(self, engine):
        (shop,) = await new_locations(engine)
        a, b = unique("sku"), unique("sku")
        result = await self.run(
            engine,
            [
                receipt(shop, {a: 10, b: 10}, at=0),
                sale(shop, {a: 2}, at=10),
                count(shop, {a: 7}, at=5),  # 7 at minute 5, then the sale at 10: 5
                sale(shop, {a: 1}, at=3),  # the count already saw it
                adjust(shop, {a: 1}, reason="found", at=4),  # likewise
                count(shop, {a: 9}, at=4),  # older than the latest count
                sale(shop, {a: 1}, at=5),  # the count's own instant is not earlier than it: applied
                sale(shop, {b: 2}, at=5),  # b: a sale at the instant of the count that arrives first ...
                count(shop, {b: 6}, at=5),  # ... is kept as well: 6 - 2
            ],
        )
        assert result.positions[(shop, a)] == numbers(4, available=4, version=7)
        assert result.positions[(shop, b)]["on_hand"] == 4
        assert result.outcomes == [APPLIED] * 9

    async def test_reservations_hold_collect_cancel_and_expire(self, engine):
        (shop,) = await new_locations(engine)
        a, b = unique("sku"), unique("sku")
        r1, r2, r3, r4 = (unique("res") for _ in range(4))
        result = await self.run(
            engine,
            [
                receipt(shop, {a: 10, b: 3}),
                safety_stock(shop, b, 1),
                reserve(shop, {a: 3, b: 2}, reservation_id=r1),
                reserve(shop, {b: 1}, reservation_id=r2),  # b: 3 - 2 held - 1 safety = 0 available
                collect(shop, r1),
                reserve(shop, {a: 4}, reservation_id=r3),
                cancel(shop, r3),
                collect(shop, r3),
                reserve(shop, {a: 5}, reservation_id=r4, ttl_seconds=60),
                Advance(61),
                expire(shop, r4, at=2),
            ],
        )
        assert result.positions == {
            (shop, a): numbers(7, available=7, version=7),
            (shop, b): numbers(1, safety_stock=1, available=0, version=4),
        }
        assert result.outcomes == [
            *[APPLIED] * 3,
            ("rejected", "insufficient_stock"),
            *[APPLIED] * 3,
            ("rejected", "reservation_not_held"),
            *[APPLIED] * 2,
        ]
        assert result.statuses == {r1: "collected", r3: "cancelled", r4: "expired"}

    async def test_a_hold_past_its_expiry_is_expired_by_whoever_asks_first(self, engine):
        (shop,) = await new_locations(engine)
        a = unique("sku")
        r1, r2 = unique("res"), unique("res")
        result = await self.run(
            engine,
            [
                receipt(shop, {a: 10}),
                reserve(shop, {a: 3}, reservation_id=r1, ttl_seconds=60),
                reserve(shop, {a: 2}, reservation_id=r2, ttl_seconds=60),
                Advance(60),  # at expires_at exactly, and no sweeper has run
                collect(shop, r1, at=1),
                cancel(shop, r2, at=1),
                expire(shop, r1, at=1, event_id=f"expire:{r1}"),  # the sweeper, late
            ],
        )
        assert result.positions == {(shop, a): numbers(10, available=10, version=5)}
        assert result.outcomes == [
            *[APPLIED] * 3,
            ("rejected", "reservation_not_held"),
            ("rejected", "reservation_not_held"),
            ("duplicate", None),
        ]
        assert result.statuses == {r1: "expired", r2: "expired"}

    async def test_repeats_conflicts_and_refusals_move_nothing(self, engine):
        shop, other = await new_locations(engine, 2)
        a = unique("sku")
        first_sale, held = sale(shop, {a: 3}), reserve(shop, {a: 2})
        result = await self.run(
            engine,
            [
                receipt(shop, {a: 10}),
                first_sale,
                first_sale,
                other_body(first_sale),
                held,
                held,
                sale(unique("nowhere"), {a: 1}),
                collect(other, held.reservation_id),
                cancel(shop, unique("res")),
                reserve(shop, {a: 6}),
            ],
        )
        assert result.positions == {
            (shop, a): numbers(7, reserved=2, available=5, version=3),
        }
        assert result.outcomes == [
            ("applied", None),
            ("applied", None),
            ("duplicate", None),
            ("rejected", "event_id_conflict"),
            ("applied", None),
            ("duplicate", None),
            ("rejected", "unknown_location"),
            ("rejected", "unknown_reservation"),
            ("rejected", "unknown_reservation"),
            ("rejected", "insufficient_stock"),
        ]
        assert result.statuses == {held.reservation_id: "held"}


class TestPureLedger(LedgerScenarios):
    """(a) the core alone: one Ledger working set, the clock moved in place."""

    @pytest.fixture
    def engine(self) -> None:
        return None

    async def run(self, engine, steps):
        location_ids = {step.location_id for step in steps if not isinstance(step, Advance)}
        ledger = new_ledger(*(lid for lid in location_ids if not lid.startswith("nowhere")), now=T0)
        outcomes = []
        for step in steps:
            if isinstance(step, Advance):
                ledger.now += timedelta(seconds=step.seconds)
            else:
                outcomes.extend(apply(ledger, step))
        return Result(
            positions={key: position_numbers(ledger.positions[key]) for key in ledger.changed_positions},
            outcomes=[(o.outcome, o.error) for o in outcomes],
            statuses={rid: r.status for (_, rid), r in ledger.reservations.items()},
        )


class ServiceBackend(LedgerScenarios):
    async def batches(self, service: LedgerService, clock: ManualClock, steps) -> list:
        raise NotImplementedError

    async def run(self, engine, steps):
        clock = ManualClock(T0)
        outcomes = await self.batches(service(engine, clock), clock, steps)
        location_ids = {step.location_id for step in steps if not isinstance(step, Advance)}
        reservation_ids = [getattr(step, "reservation_id", None) for step in steps]
        statuses = await rows(
            engine,
            "SELECT reservation_id, status FROM reservations WHERE reservation_id = ANY(:ids)",
            ids=[rid for rid in reservation_ids if rid],
        )
        return Result(
            positions=await stored_positions(engine, *location_ids),
            outcomes=[(o.outcome, o.error) for o in outcomes],
            statuses=dict(statuses),  # type: ignore[arg-type]
        )


class TestServiceInMemory(LedgerScenarios):
    """(d) the application's own path (load, apply, one write per transaction) over the in-memory store:
    every event its own transaction, as (b), with no database."""

    @pytest.fixture
    def engine(self) -> None:
        return None

    async def run(self, engine, steps):
        location_ids = {step.location_id for step in steps if not isinstance(step, Advance)}
        known = [store(lid) for lid in location_ids if not lid.startswith("nowhere")]
        memory, clock = MemoryLedgerStore(known), ManualClock(T0)
        ledger, outcomes = LedgerService(store=memory, clock=clock), []
        for step in steps:
            if isinstance(step, Advance):
                clock.advance(seconds=step.seconds)
            else:
                outcomes.extend((await ledger.apply([step])).outcomes)
        return Result(
            positions={key: position_numbers(p) for key, p in memory.positions.items()},
            outcomes=[(o.outcome, o.error) for o in outcomes],
            statuses={rid: r.status for (_, rid), r in memory.reservations.items()},
        )


class TestServiceOneEventPerTransaction(ServiceBackend):
    """(b) every event its own transaction: stored state is reloaded between them."""

    async def batches(self, service, clock, steps):
        outcomes = []
        for step in steps:
            if isinstance(step, Advance):
                clock.advance(seconds=step.seconds)
            else:
                outcomes.extend((await service.apply([step])).outcomes)
        return outcomes


class TestServiceWholeBatch(ServiceBackend):
    """(c) the whole scenario in one transaction (a new one only where the clock moves)."""

    async def batches(self, service, clock, steps):
        outcomes, batch = [], []
        for step in [*steps, Advance(0)]:
            if isinstance(step, Advance):
                if batch:
                    outcomes.extend((await service.apply(batch)).outcomes)
                batch = []
                clock.advance(seconds=step.seconds)
            else:
                batch.append(step)
        return outcomes


# -- exactly once -----------------------------------------------------------------------------------------


async def test_many_identifiers_cross_joined_and_come_back_each_itself(engine):
    """Skus, locations and event ids travel joined (`ledger_store.joined`): 300 of each, and the odd ones the
    contract allows (dots, colons, spaces in event ids), are each stored against its own position."""
    shops = await new_locations(engine, 3)
    skus = [f"{unique('sku')}.{n}" for n in range(100)]
    events = [
        receipt(shop, {sku: n + 1}, event_id=f"till 7: {unique('e')}")
        for shop in shops
        for n, sku in enumerate(skus)
    ]
    result = await service(engine).apply(events)
    assert {o.outcome for o in result.outcomes} == {"applied"}
    stored = await stored_positions(engine, *shops)
    assert {key: numbers["on_hand"] for key, numbers in stored.items()} == {
        (shop, sku): n + 1 for shop in shops for n, sku in enumerate(skus)
    }
    recorded = await rows(
        engine, "SELECT count(*) AS n FROM processed_events WHERE location_id = ANY(:ids)", ids=shops
    )
    assert recorded[0].n == 300


async def test_an_identifier_holding_the_separator_fails_its_batch_and_writes_nothing(engine):
    """The contract refuses control characters in ids at the edge; one built past it must fail its batch
    (the worker then isolates and dead-letters it), never be split into other positions."""
    (shop,) = await new_locations(engine)
    sku = unique("sku")
    with pytest.raises(ValueError, match="identifier"):
        await service(engine).apply([receipt(shop, {sku: 1}), receipt(shop, {f"{sku}\x1fother": 5})])
    assert await stored_positions(engine, shop) == {}


async def test_an_event_delivered_five_times_moves_stock_once(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    clock = ManualClock(T0)
    ledger = service(engine, clock)
    await ledger.apply([receipt(shop, {a: 10})])
    event = sale(shop, {a: 3})

    answers = []
    for _ in range(5):
        clock.advance(minutes=1)
        answers.append((await ledger.apply([event])).outcomes[0])

    assert [o.outcome for o in answers] == ["applied"] + ["duplicate"] * 4
    assert [o.recorded_at for o in answers] == [T0 + timedelta(minutes=n) for n in range(1, 6)]
    assert [(m.on_hand_delta, m.sku) for m in await movements_of(engine, event.event_id)] == [(-3, a)]
    assert (await stored_positions(engine, shop))[(shop, a)]["on_hand"] == 7
    (record,) = await rows(engine, "SELECT * FROM processed_events WHERE event_id = :e", e=event.event_id)
    assert (record.outcome, record.error, record.type, record.location_id) == ("applied", None, "sale", shop)
    assert (record.recorded_at, bytes(record.body_hash)) == (T0 + timedelta(minutes=1), body_hash(event))


async def test_a_rejected_event_delivered_again_is_rejected_again_from_the_record(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    ledger = service(engine)
    event = reserve(shop, {a: 2})
    first, second = [(await ledger.apply([event])).outcomes[0] for _ in range(2)]
    assert (
        (first.outcome, first.error) == (second.outcome, second.error) == ("rejected", "insufficient_stock")
    )
    assert [(s.sku, s.requested, s.available) for s in second.shortages] == [(a, 2, 0)]
    (record,) = await rows(engine, "SELECT * FROM processed_events WHERE event_id = :e", e=event.event_id)
    assert (record.outcome, record.error, record.shortages) == (
        "rejected",
        "insufficient_stock",
        [{"sku": a, "requested": 2, "available": 0}],
    )
    assert await movements_of(engine, event.event_id) == []


async def test_the_same_event_id_with_another_body_is_a_conflict(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    ledger = service(engine)
    event = receipt(shop, {a: 4})
    await ledger.apply([event])
    (conflict,) = (await ledger.apply([receipt(shop, {a: 40}, event_id=event.event_id)])).outcomes

    assert (conflict.outcome, conflict.error) == ("rejected", "event_id_conflict")
    assert (await stored_positions(engine, shop))[(shop, a)]["on_hand"] == 4
    assert len(await movements_of(engine, event.event_id)) == 1
    (record,) = await rows(engine, "SELECT * FROM processed_events WHERE event_id = :e", e=event.event_id)
    assert (record.outcome, bytes(record.body_hash)) == ("applied", body_hash(event))


async def test_the_same_event_id_at_two_locations_is_two_events_each_applied_once(engine):
    """Rule 10: an event is its location and id, whether the two arrive in one batch or in two."""
    shop_a, shop_b, shop_c = await new_locations(engine, 3)
    a = unique("sku")
    ledger = service(engine)
    await ledger.apply([receipt(shop, {a: 10}) for shop in (shop_a, shop_b, shop_c)])
    claimed = sale(shop_a, {a: 1})
    await ledger.apply([claimed])
    real = sale(shop_b, {a: 3}, event_id=claimed.event_id)
    together = [sale(shop_c, {a: 2}, event_id=claimed.event_id), real]

    first = (await ledger.apply([real, *together])).outcomes
    again = (await ledger.apply([claimed, real, receipt(shop_b, {a: 1}, event_id=claimed.event_id)])).outcomes

    assert [(o.location_id, o.outcome) for o in first] == [
        (shop_b, "applied"),
        (shop_c, "applied"),
        (shop_b, "duplicate"),
    ]
    assert [(o.outcome, o.error) for o in again] == [
        ("duplicate", None),
        ("duplicate", None),
        ("rejected", "event_id_conflict"),
    ]
    positions = await stored_positions(engine, shop_a, shop_b, shop_c)
    assert [positions[(shop, a)]["on_hand"] for shop in (shop_a, shop_b, shop_c)] == [9, 7, 8]
    recorded = await rows(
        engine, "SELECT location_id FROM processed_events WHERE event_id = :e ORDER BY 1", e=claimed.event_id
    )
    assert [r.location_id for r in recorded] == sorted([shop_a, shop_b, shop_c])
    msg_ids = [r.msg_id for r in await outbox_for(engine, shop_a, shop_b) if ".outcome." in r.subject]
    assert f"outcome:{shop_a}:{claimed.event_id}:applied" in msg_ids
    assert f"outcome:{shop_b}:{claimed.event_id}:applied" in msg_ids  # not collapsed into store A's by NATS


async def test_the_same_reservation_id_at_two_locations_is_two_reservations(engine):
    """A staff key of one store claims no reservation id the web shop will use at another (in one batch or
    in several), and settling one leaves the other alone."""
    shop_a, shop_b = await new_locations(engine, 2)
    a, rid = unique("sku"), unique("res")
    ledger = service(engine)
    await ledger.apply([receipt(shop, {a: 10}) for shop in (shop_a, shop_b)])
    await ledger.apply([reserve(shop_a, {a: 1}, reservation_id=rid, channel="staff")])

    held = (await ledger.apply([reserve(shop_b, {a: 2}, reservation_id=rid)])).outcomes
    collected = await ledger.apply([collect(shop_b, rid), cancel(shop_a, unique("res"))])

    assert [(o.outcome, o.error) for o in held] == [("applied", None)]
    assert [(o.outcome, o.error) for o in collected.outcomes] == [
        ("applied", None),
        ("rejected", "unknown_reservation"),
    ]
    assert collected.reservations[(shop_b, rid)].status == "collected"
    statuses = await rows(
        engine, "SELECT location_id, status FROM reservations WHERE reservation_id = :r ORDER BY 1", r=rid
    )
    assert sorted(map(tuple, statuses)) == sorted([(shop_a, "held"), (shop_b, "collected")])
    lines = await rows(
        engine, "SELECT location_id, qty FROM reservation_lines WHERE reservation_id = :r ORDER BY 1", r=rid
    )
    assert sorted(map(tuple, lines)) == sorted([(shop_a, 1), (shop_b, 2)])
    positions = await stored_positions(engine, shop_a, shop_b)
    assert [(positions[(s, a)]["on_hand"], positions[(s, a)]["reserved"]) for s in (shop_a, shop_b)] == [
        (10, 1),
        (8, 0),
    ]
    msg_ids = [r.msg_id for r in await outbox_for(engine, rid)]
    assert len(msg_ids) == len(set(msg_ids)) == 3  # held at A, held at B, collected at B: none collapsed


async def test_a_sale_older_than_a_stored_count_is_recorded_superseded(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    ledger = service(engine)
    await ledger.apply([receipt(shop, {a: 10}, at=0)])
    await ledger.apply([count(shop, {a: 6}, at=10)])
    late = sale(shop, {a: 2}, at=5)
    await ledger.apply([late])

    (movement,) = await movements_of(engine, late.event_id)
    assert (movement.on_hand_delta, movement.superseded_by_count, movement.occurred_at) == (0, True, at(5))
    position = (await stored_positions(engine, shop))[(shop, a)]
    assert (position["on_hand"], position["version"]) == (6, 3)
    (last_count,) = await rows(engine, "SELECT last_count_at FROM positions WHERE location_id = :l", l=shop)
    assert last_count.last_count_at == at(10)


async def test_a_count_keeps_stored_changes_made_after_it(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    ledger = service(engine)
    for event in (receipt(shop, {a: 10}, at=0), sale(shop, {a: 2}, at=10), sale(shop, {a: 1}, at=5)):
        await ledger.apply([event])
    await ledger.apply(
        [count(shop, {a: 7}, at=5)]
    )  # 7 at 5 includes nothing after; the sale at 5 and at 10 follow
    assert (await stored_positions(engine, shop))[(shop, a)]["on_hand"] == 4


# -- concurrency ------------------------------------------------------------------------------------------


def deadlock_retries() -> float:
    return metrics.RETRIES.labels("deadlock")._value.get()


async def test_concurrent_batches_on_overlapping_positions_in_different_orders(engine):
    shops = await new_locations(engine, 2)
    skus = [unique("sku") for _ in range(4)]
    keys = [(shop, sku) for shop in shops for sku in skus]
    ledger = service(engine)
    await ledger.apply([receipt(shop, {sku: 100 for sku in skus}) for shop in shops])
    retries = deadlock_retries()

    rng = random.Random(7)
    batches = []
    for n in range(20):
        order = rng.sample(keys, len(keys))
        batches.append([(sale if n % 2 else receipt)(shop, {sku: n + 1}) for shop, sku in order])
    results = await asyncio.gather(*(ledger.apply(batch) for batch in batches))

    assert all(o.outcome == "applied" for result in results for o in result.outcomes)
    expected = 100 + sum(-(n + 1) if n % 2 else n + 1 for n in range(20))
    positions = await stored_positions(engine, *shops)
    assert {key: (p["on_hand"], p["version"]) for key, p in positions.items()} == {
        key: (expected, 21) for key in keys
    }
    assert deadlock_retries() == retries, "positions are locked in one order: no deadlock to retry"


async def test_concurrent_batches_creating_the_same_new_positions(engine):
    (shop,) = await new_locations(engine)
    skus = [unique("sku") for _ in range(5)]
    ledger = service(engine)
    rng = random.Random(11)
    batches = [[receipt(shop, [(sku, 1) for sku in rng.sample(skus, len(skus))])] for _ in range(20)]
    results = await asyncio.gather(*(ledger.apply(batch) for batch in batches))

    assert all(o.outcome == "applied" for result in results for o in result.outcomes)
    positions = await stored_positions(engine, shop)
    assert {sku: (p["on_hand"], p["version"]) for (_, sku), p in positions.items()} == {
        sku: (20, 20) for sku in skus
    }


async def test_the_same_event_in_two_concurrent_batches_is_applied_once(engine):
    (shop,) = await new_locations(engine)
    a, b = unique("sku"), unique("sku")
    ledger = service(engine)
    await ledger.apply([receipt(shop, {a: 100})])  # a exists, b is created by the racing batches
    events = [sale(shop, {a: 1, b: 1}) for _ in range(10)]
    results = await asyncio.gather(
        *(ledger.apply([receipt(shop, {a: 1}), event]) for event in events),
        *(ledger.apply([event]) for event in events),
    )

    outcomes = sorted(o.outcome for result in results for o in result.outcomes if o.type == "sale")
    assert outcomes == ["applied"] * 10 + ["duplicate"] * 10
    for event in events:
        assert len(await movements_of(engine, event.event_id)) == 2
    positions = await stored_positions(engine, shop)
    assert (positions[(shop, a)]["on_hand"], positions[(shop, b)]["on_hand"]) == (100 + 10 - 10, -10)


async def test_fifty_shoppers_race_for_ten_units(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    ledger = service(engine)
    await ledger.apply([receipt(shop, {a: 10})])
    requests = [reserve(shop, {a: 1}) for _ in range(50)]
    results = await asyncio.gather(*(ledger.apply([request]) for request in requests))

    outcomes = [result.outcomes[0] for result in results]
    assert sum(o.outcome == "applied" for o in outcomes) == 10
    assert {o.error for o in outcomes if o.outcome != "applied"} == {"insufficient_stock"}
    position = (await stored_positions(engine, shop))[(shop, a)]
    assert (position["on_hand"], position["reserved"], position["available"], position["version"]) == (
        10,
        10,
        0,
        11,
    )
    (held,) = await rows(
        engine, "SELECT count(*) AS n FROM reservations WHERE location_id = :l AND status = 'held'", l=shop
    )
    assert held.n == 10


# -- expiry -----------------------------------------------------------------------------------------------


async def test_expire_releases_a_hold_only_once_it_is_due(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    clock = ManualClock(T0)
    ledger = service(engine, clock)
    hold = reserve(shop, {a: 4}, ttl_seconds=300)
    await ledger.apply([receipt(shop, {a: 10}), hold])
    (stored,) = await rows(
        engine, "SELECT * FROM reservations WHERE reservation_id = :r", r=hold.reservation_id
    )
    assert (stored.status, stored.created_at, stored.expires_at) == ("held", T0, T0 + timedelta(seconds=300))

    clock.advance(seconds=299)
    (early,) = (await ledger.apply([expire(shop, hold.reservation_id, at=clock.now)])).outcomes
    assert (early.outcome, early.error) == ("rejected", "reservation_not_held")
    assert (await stored_positions(engine, shop))[(shop, a)]["reserved"] == 4

    clock.advance(seconds=2)
    (due,) = (await ledger.apply([expire(shop, hold.reservation_id, at=clock.now)])).outcomes
    assert due.outcome == "applied"
    position = (await stored_positions(engine, shop))[(shop, a)]
    assert (position["on_hand"], position["reserved"], position["available"], position["version"]) == (
        10,
        0,
        10,
        3,
    )
    (stored,) = await rows(
        engine, "SELECT status FROM reservations WHERE reservation_id = :r", r=hold.reservation_id
    )
    assert stored.status == "expired"
    (late_collect,) = (await ledger.apply([collect(shop, hold.reservation_id)])).outcomes
    assert (late_collect.outcome, late_collect.error) == ("rejected", "reservation_not_held")


# -- the outbox -------------------------------------------------------------------------------------------


async def outbox_for(engine: AsyncEngine, *tokens: str) -> list:
    """Outbox messages whose subject names one of ``tokens`` (this test's unique ids), in commit order: rows,
    and the messages of bundles that name one."""
    found = await rows(
        engine,
        "SELECT subject, msg_id, payload, kv_key, version, traceparent FROM outbox"
        " WHERE subject LIKE ANY(:patterns) OR (subject = :bundle AND EXISTS ("
        "   SELECT FROM unnest(CAST(:tokens AS text[])) AS t WHERE position(convert_to(t, 'UTF8') IN payload) > 0"
        " )) ORDER BY id",
        patterns=[f"%.{token}%" for token in tokens],
        bundle=OUTBOX_BUNDLE,
        tokens=[f".{token}" for token in tokens],
    )
    return [m for m in unpacked(found) if any(f".{token}" in m.subject for token in tokens)]


async def test_a_transactions_messages_are_one_outbox_row(engine):
    """Three events at one store: one bundle row holding their availability and outcomes, in outbox order."""
    (shop,) = await new_locations(engine)
    a = unique("sku")
    await service(engine).apply([receipt(shop, {a: 5}), sale(shop, {a: 1}), sale(shop, {a: 1})])
    (row,) = await rows(
        engine,
        "SELECT subject, messages FROM outbox WHERE position(convert_to(:token, 'UTF8') IN payload) > 0",
        token=f".{shop}.",
    )
    assert (row.subject, row.messages) == (OUTBOX_BUNDLE, 4)
    assert [m.subject for m in await outbox_for(engine, shop)] == [
        f"stocksync.out.availability.{shop}.{a}",
        *[f"stocksync.out.outcome.{shop}"] * 3,
    ]


async def test_outbox_has_one_availability_row_per_changed_position_with_its_final_version(engine):
    (shop,) = await new_locations(engine)
    a, b = unique("sku"), unique("sku")
    first, second, third = receipt(shop, {a: 5}), sale(shop, {a: 1}), receipt(shop, {b: 2})
    await service(engine).apply([first, second, third])

    found = await outbox_for(engine, shop)
    availability = [r for r in found if r.subject.startswith("stocksync.out.availability.")]
    assert [(r.subject, r.kv_key, r.version, r.msg_id) for r in availability] == [
        (f"stocksync.out.availability.{shop}.{a}", f"{shop}.{a}", 2, f"availability:{shop}:{a}:2"),
        (f"stocksync.out.availability.{shop}.{b}", f"{shop}.{b}", 1, f"availability:{shop}:{b}:1"),
    ]
    body = json.loads(availability[0].payload)
    assert {k: body[k] for k in ("sku", "location_id", "on_hand", "reserved", "available", "version")} == {
        "sku": a,
        "location_id": shop,
        "on_hand": 4,
        "reserved": 0,
        "available": 4,
        "version": 2,
    }
    outcomes = [json.loads(r.payload) for r in found if r.subject == f"stocksync.out.outcome.{shop}"]
    assert [(o["event_id"], o["type"], o["outcome"]) for o in outcomes] == [
        (first.event_id, "receipt", "applied"),
        (second.event_id, "sale", "applied"),
        (third.event_id, "receipt", "applied"),
    ]


async def test_outbox_reservation_rows_held_and_rejected(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    held, refused = reserve(shop, {a: 3}), reserve(shop, {a: 3})
    await service(engine).apply([receipt(shop, {a: 4}), held, refused])

    found = await outbox_for(engine, held.reservation_id, refused.reservation_id)
    bodies = {r.subject: json.loads(r.payload) for r in found}
    ok = bodies[f"stocksync.out.reservation.{held.reservation_id}"]
    assert (ok["status"], ok["lines"], ok["event_id"], ok["shortages"]) == (
        "held",
        [{"sku": a, "qty": 3}],
        held.event_id,
        [],
    )
    no = bodies[f"stocksync.out.reservation.{refused.reservation_id}"]
    assert (no["status"], no["shortages"], no["expires_at"]) == (
        "rejected",
        [{"sku": a, "requested": 3, "available": 1}],
        None,
    )


async def test_a_sale_that_breaks_promises_publishes_alerts_naming_the_reservations(engine):
    (shop,) = await new_locations(engine)
    a = unique("sku")
    clock = ManualClock(T0)
    ledger = service(engine, clock)
    oldest, newer = reserve(shop, {a: 2}), reserve(shop, {a: 2})
    await ledger.apply([receipt(shop, {a: 5}), oldest])
    clock.advance(minutes=1)
    await ledger.apply([newer])
    fact = sale(shop, {a: 3})
    await ledger.apply([fact])  # on_hand 2 covers the oldest hold only

    alerts = [
        json.loads(r.payload)
        for r in await outbox_for(engine, shop)
        if r.subject == f"stocksync.out.alert.{shop}"
    ]
    assert alerts == [
        {
            "kind": "reservation_at_risk",
            "location_id": shop,
            "sku": a,
            "on_hand": 2,
            "reserved": 4,
            "reservation_ids": [newer.reservation_id],
            "event_id": fact.event_id,
        },
    ]

    below_zero = sale(shop, {a: 3})
    await ledger.apply([below_zero])
    alerts = [
        json.loads(r.payload)
        for r in await outbox_for(engine, shop)
        if r.subject == f"stocksync.out.alert.{shop}"
    ]
    assert [(x["kind"], x["on_hand"], x["reservation_ids"]) for x in alerts[1:]] == [
        ("negative_stock", -1, []),
        ("reservation_at_risk", -1, [oldest.reservation_id, newer.reservation_id]),
    ]


# -- the database guards the ledger -----------------------------------------------------------------------


async def attempt(engine: AsyncEngine, sql: str, **params) -> None:
    """Run one statement in a transaction rolled back whatever happens (the session shares this database)."""
    async with engine.connect() as conn:
        try:
            await conn.execute(text(sql), params)
        finally:
            await conn.rollback()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE movements SET on_hand_delta = 100 WHERE event_id = :e",
        "UPDATE movements SET superseded_by_count = true WHERE event_id = :e",
        "DELETE FROM movements WHERE event_id = :e",
        "TRUNCATE movements",
    ],
    ids=["update-delta", "update-flag", "delete", "truncate"],
)
async def test_movements_are_append_only(engine, statement):
    (shop,) = await new_locations(engine)
    event = receipt(shop, {unique("sku"): 1})
    await service(engine).apply([event])
    with pytest.raises(DBAPIError, match="append-only"):
        await attempt(engine, statement, e=event.event_id)
    assert [m.on_hand_delta for m in await movements_of(engine, event.event_id)] == [1]


async def test_reserved_below_zero_violates_a_check(engine):
    (shop,) = await new_locations(engine)
    await service(engine).apply([receipt(shop, {unique("sku"): 1})])
    with pytest.raises(IntegrityError, match="positions_reserved_non_negative"):
        await attempt(engine, "UPDATE positions SET reserved = -1 WHERE location_id = :l", l=shop)


async def test_an_event_id_is_recorded_once_only(engine):
    (shop,) = await new_locations(engine)
    event = receipt(shop, {unique("sku"): 1})
    await service(engine).apply([event])
    with pytest.raises(IntegrityError, match="processed_events_pkey"):
        await attempt(
            engine,
            "INSERT INTO processed_events (event_id, body_hash, type, location_id, outcome, recorded_at)"
            " VALUES (:e, '\\x00', 'receipt', :l, 'applied', now())",
            e=event.event_id,
            l=shop,
        )
