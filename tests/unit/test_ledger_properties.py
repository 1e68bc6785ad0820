"""Properties of the ledger core over generated histories: re-deliveries, conflicting ids, events out of
order, several transactions, a moving clock. The invariants of rules 1-3, 6, 9-11 hold after every step."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import structs

from stocksync.adapters.memory_store import MemoryLedgerStore
from stocksync.domain.events import INBOUND_TYPES, Command, Count
from stocksync.domain.ledger import Ledger
from stocksync.domain.model import Movement, PositionKey, available
from tests.support_ledger import (
    T0,
    adjust,
    cancel,
    collect,
    count,
    expire,
    hash_of,
    other_body,
    receipt,
    reserve,
    return_,
    safety_stock,
    sale,
    store,
)

LOCATIONS = ("L1", "L2")
SKUS = ("A", "B", "C")
RESERVATION_IDS = ("R1", "R2", "R3", "R4")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

location_ids = st.sampled_from(LOCATIONS + LOCATIONS + ("LX",))  # LX is not a known location
minutes = st.integers(0, 20)  # a coarse grid, so that events share instants and arrive out of order
lines = st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 5)), min_size=1, max_size=3)
reservation_ids = st.sampled_from(RESERVATION_IDS)

facts = st.one_of(
    st.builds(lambda loc, ls, t: sale(loc, ls, at=t), location_ids, lines, minutes),
    st.builds(lambda loc, ls, t: receipt(loc, ls, at=t), location_ids, lines, minutes),
    st.builds(
        lambda loc, ls, d, t: return_(loc, ls, disposition=d, at=t),
        location_ids,
        lines,
        st.sampled_from(["restock", "damaged"]),
        minutes,
    ),
    st.builds(
        lambda loc, ls, t: adjust(loc, ls, reason="correction", at=t),
        location_ids,
        st.lists(st.tuples(st.sampled_from(SKUS), st.integers(-5, 5).filter(bool)), min_size=1, max_size=3),
        minutes,
    ),
    st.builds(
        lambda loc, ls, t: count(loc, ls, at=t),
        location_ids,
        st.lists(st.tuples(st.sampled_from(SKUS), st.integers(0, 12)), min_size=1, max_size=2),
        minutes,
    ),
)

requests = st.one_of(
    st.builds(
        lambda loc, ls, rid, ttl, t: reserve(loc, ls, reservation_id=rid, ttl_seconds=ttl, at=t),
        location_ids,
        lines,
        reservation_ids,
        st.sampled_from([60, 600, 3600]),
        minutes,
    ),
    st.builds(lambda loc, rid, t: collect(loc, rid, at=t), location_ids, reservation_ids, minutes),
    st.builds(lambda loc, rid, t: cancel(loc, rid, at=t), location_ids, reservation_ids, minutes),
    st.builds(lambda loc, rid, t: expire(loc, rid, at=t), location_ids, reservation_ids, minutes),
    st.builds(
        lambda loc, sku, qty, t: safety_stock(loc, sku, qty, at=t),
        location_ids,
        st.sampled_from(SKUS),
        st.integers(0, 3),
        minutes,
    ),
)


def numbered(events: list[Command]) -> list[Command]:
    """Short, unique event ids (e0, e1, ...): re-deliveries and conflicts are easy to read when shrunk."""
    return [structs.replace(event, event_id=f"e{i}") for i, event in enumerate(events)]


def with_redeliveries(data: st.DataObject, events: list[Command]) -> list[Command]:
    """Insert repeats of inbound events (same body, or the same id with another body) anywhere, even first."""
    deliveries = list(events)
    inbound = [event for event in events if event.type in INBOUND_TYPES]
    if not inbound:
        return deliveries
    for _ in range(data.draw(st.integers(0, 6), label="redeliveries")):
        original = data.draw(st.sampled_from(inbound))
        repeat = other_body(original) if data.draw(st.booleans(), label="conflicting body") else original
        deliveries.insert(data.draw(st.integers(0, len(deliveries))), repeat)
    return deliveries


class History:
    """Applies deliveries through Ledgers over the in-memory store, split into transactions, checking every
    step: each transaction's working set is the whole ledger, and its record is kept as the application would."""

    def __init__(self) -> None:
        self.db = MemoryLedgerStore([store(location_id) for location_id in LOCATIONS])
        self.now = T0
        self.ledger = Ledger.of(self.db.load_now(None, self.now))
        self.step = 0
        self.applications: dict[str, set[int]] = defaultdict(set)  # event_id -> steps that moved stock
        self.statuses: dict[str, str] = {}
        self.hashes: dict[str, bytes] = {}
        self.latest_count: dict[
            PositionKey, tuple[datetime, int, int]
        ] = {}  # key -> (at, counted, movement #)

    @property
    def movements(self) -> list[Movement]:
        return self.db.movements + self.ledger.movements

    def deliver(self, event: Command) -> None:
        before = len(self.ledger.movements)
        outcome = self.ledger.apply(event, hash_of(event))
        moved = self.ledger.movements[before:]
        self.step += 1
        assert outcome.event_id == event.event_id
        # A collect or cancel that finds its hold due expires it first, with the sweeper's movement (rule 7).
        own = [m for m in moved if m.event_id == event.event_id]
        due = [m for m in moved if m.event_id != event.event_id]
        assert not due or event.type in ("collect", "cancel")
        assert all(m.event_id == f"expire:{getattr(event, 'reservation_id', None)}" for m in due)
        if outcome.outcome != "applied":
            assert own == [], f"a {outcome.outcome} {event.type} moved stock"
        if own:
            self.applications[event.event_id].add(self.step)
        if isinstance(event, Count) and moved:
            self._note_counts(event, moved, len(self.movements) - len(moved))
        self.check(event)

    def commit(self, advance_seconds: int) -> None:
        self.db.keep(self.ledger.changes(self.db.held_now(self.ledger.positions_at_risk())))
        self.now += timedelta(seconds=advance_seconds)
        self.ledger = Ledger.of(self.db.load_now(None, self.now))

    def _note_counts(self, event: Count, moved: list[Movement], first_index: int) -> None:
        for i, (line, movement) in enumerate(zip(event.lines, moved, strict=True)):
            assert movement.sku == line.sku and movement.reason == "count"
            if not movement.superseded_by_count:
                self.latest_count[(event.location_id, line.sku)] = (
                    event.occurred_at,
                    line.counted,
                    first_index + i,
                )

    def check(self, event: Command) -> None:
        ledger: Ledger = self.ledger
        movements = self.movements
        by_position: dict[PositionKey, list[tuple[int, Movement]]] = defaultdict(list)
        for index, movement in enumerate(movements):
            by_position[(movement.location_id, movement.sku)].append((index, movement))
        held: dict[PositionKey, int] = defaultdict(int)
        for reservation in ledger.reservations.values():
            if reservation.status == "held":
                for line in reservation.lines:
                    held[(reservation.location_id, line.sku)] += line.qty

        assert set(by_position) <= set(ledger.positions)
        for key, position in ledger.positions.items():
            moved = [m for _, m in by_position[key]]
            assert position.on_hand == sum(m.on_hand_delta for m in moved), key  # rule 2
            assert position.damaged == sum(m.damaged_delta for m in moved), key
            assert position.reserved == held[key] == sum(m.reserved_delta for m in moved), key
            assert position.reserved >= 0 and position.safety_stock >= 0
            assert position.version == len(moved), key  # rule 3
            assert position.available == available(position.on_hand, position.reserved, position.safety_stock)
            assert position.available >= 0  # rule 1
            if key in self.latest_count:  # rule 9: on_hand is the count plus what happened from then on
                counted_at, counted, count_index = self.latest_count[key]
                assert position.last_count_at == counted_at
                after = sum(
                    m.on_hand_delta
                    for i, m in by_position[key]
                    if m.occurred_at >= counted_at and i != count_index
                )
                assert position.on_hand == counted + after, (key, counted_at, counted)

        for event_id, steps in self.applications.items():  # rule 10: applied at most once
            assert len(steps) == 1, f"{event_id} moved stock in steps {sorted(steps)}"

        for (
            reservation_id,
            status,
        ) in self.statuses.items():  # rule 6: held -> collected | cancelled | expired
            now = ledger.reservations[reservation_id].status
            assert now == status or status == "held", f"{reservation_id}: {status} -> {now}"
        self.statuses = {rid: r.status for rid, r in ledger.reservations.items()}

        if event.type in INBOUND_TYPES:  # rule 11: every inbound event is recorded, first body kept
            record = {**self.db.recorded, **ledger.new_records}[(event.location_id, event.event_id)]
            self.hashes.setdefault(event.event_id, hash_of(event))
            assert record.body_hash == self.hashes[event.event_id]


@SETTINGS
@given(st.data())
def test_invariants_hold_after_every_step(data: st.DataObject) -> None:
    events = numbered(
        data.draw(st.lists(st.one_of(facts, requests), min_size=1, max_size=30), label="events")
    )
    history = History()
    for event in with_redeliveries(data, events):
        history.deliver(event)
        if data.draw(st.booleans(), label="commit"):
            history.commit(data.draw(st.sampled_from([0, 30, 600, 3600]), label="advance seconds"))
    history.commit(0)


def final_stock(deliveries: list[Command], cuts: list[bool]) -> dict[PositionKey, tuple[int, int]]:
    history = History()
    for event, cut in zip(deliveries, cuts, strict=True):
        history.deliver(event)
        if cut:
            history.commit(0)
    history.commit(0)
    return {key: (p.on_hand, p.damaged) for key, p in history.db.positions.items()}


def counts_at_distinct_instants(events: list[Command]) -> bool:
    """Two counts of one position at the same instant with different numbers would be a genuine tie."""
    seen = set()
    for event in events:
        if isinstance(event, Count):
            for sku in {line.sku for line in event.lines}:
                key = (event.location_id, sku, event.occurred_at)
                if key in seen:
                    return False
                seen.add(key)
    return True


@SETTINGS
@given(st.data())
def test_facts_give_the_same_stock_whatever_order_and_transactions_they_arrive_in(
    data: st.DataObject,
) -> None:
    """Sales, returns, receipts, adjusts and counts are facts: on_hand and damaged ignore arrival order."""
    events = numbered(
        data.draw(
            st.lists(facts, min_size=1, max_size=15).filter(counts_at_distinct_instants), label="events"
        )
    )
    reordered = data.draw(st.permutations(events), label="reordered")
    in_order = final_stock(events, [False] * len(events))
    assert (
        final_stock(reordered, data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events))))
        == in_order
    )
