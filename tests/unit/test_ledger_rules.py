"""The ledger rules of spec section 2, one by one, on the pure core (`Ledger`): numbers, not that code ran."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stocksync.domain.ledger import HeldLine, reservations_at_risk
from stocksync.domain.model import Position, RecordedEvent, Shortage, available
from tests.support_ledger import (
    T0,
    adjust,
    apply,
    at,
    cancel,
    collect,
    count,
    expire,
    hash_of,
    key,
    new_ledger,
    other_body,
    receipt,
    reserve,
    return_,
    safety_stock,
    sale,
)

STORE, OTHER = "store-1", "store-2"
A, B = "SKU-A", "SKU-B"


def stocked(*lines: tuple[str, int], location_id: str = STORE, now: float = 0, **state):
    """A ledger over STORE and OTHER whose STORE positions already hold ``lines`` (as if committed before)."""
    return new_ledger(
        STORE,
        OTHER,
        now=now,
        positions=[Position(location_id=location_id, sku=sku, on_hand=qty, version=1) for sku, qty in lines],
        **state,
    )


def numbers(ledger, sku: str, location_id: str = STORE) -> tuple[int, int, int, int, int]:
    """(on_hand, reserved, damaged, available, version) of one position."""
    p = ledger.position(location_id, sku)
    return (p.on_hand, p.reserved, p.damaged, p.available, p.version)


# -- rule 1: available ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_hand", "reserved", "safety", "expected"),
    [(10, 0, 0, 10), (10, 3, 2, 5), (5, 3, 2, 0), (5, 4, 2, 0), (-4, 0, 0, 0), (0, 0, 0, 0), (7, 7, 0, 0)],
)
def test_available_is_on_hand_less_reserved_less_safety_stock_never_below_zero(
    on_hand, reserved, safety, expected
):
    assert available(on_hand, reserved, safety) == expected
    position = Position(location_id=STORE, sku=A, on_hand=on_hand, reserved=reserved, safety_stock=safety)
    assert position.available == expected


def test_available_after_receipt_safety_stock_and_reservation():
    ledger = new_ledger(STORE)
    apply(ledger, receipt(STORE, {A: 10}), safety_stock(STORE, A, 2), reserve(STORE, {A: 3}))
    assert numbers(ledger, A) == (10, 3, 0, 5, 3)


def test_a_position_never_seen_reads_all_zeros_with_version_0():
    ledger = new_ledger(STORE)
    assert numbers(ledger, "SKU-NEW") == (0, 0, 0, 0, 0)
    assert ledger.position(STORE, "SKU-NEW").safety_stock == 0
    assert ledger.movements == [] and ledger.changed_positions == {}


# -- rules 2 and 3: every change is a movement, version + 1 per movement ---------------------------------


def test_every_change_is_one_movement_and_bumps_the_version_by_one():
    ledger = new_ledger(STORE)
    first = receipt(STORE, {A: 10, B: 4})
    second = sale(STORE, {A: 3})
    apply(ledger, first, second)

    assert [(m.event_id, m.sku, m.on_hand_delta) for m in ledger.movements] == [
        (first.event_id, A, 10),
        (first.event_id, B, 4),
        (second.event_id, A, -3),
    ]
    assert numbers(ledger, A) == (7, 0, 0, 7, 2)
    assert numbers(ledger, B) == (4, 0, 0, 4, 1)
    assert list(ledger.changed_positions) == [(STORE, A), (STORE, B)]


def test_two_lines_of_one_sku_are_two_movements_and_two_versions():
    ledger = stocked((A, 10))
    apply(ledger, sale(STORE, [(A, 1), (A, 2)]))
    assert [m.on_hand_delta for m in ledger.movements] == [-1, -2]
    assert numbers(ledger, A) == (7, 0, 0, 7, 3)


def test_movement_carries_type_occurred_at_and_reason():
    ledger = new_ledger(STORE)
    event = adjust(STORE, {A: -2}, reason="shrinkage", at=7)
    apply(ledger, event)
    (movement,) = ledger.movements
    assert (movement.type, movement.occurred_at, movement.reason, movement.location_id) == (
        "adjust",
        at(7),
        "shrinkage",
        STORE,
    )
    assert (movement.on_hand_delta, movement.reserved_delta, movement.damaged_delta) == (-2, 0, 0)
    assert movement.superseded_by_count is False and movement.reservation_id is None


# -- rule 4: a sale is a fact -----------------------------------------------------------------------------


def test_sale_below_zero_is_applied_and_raises_negative_stock():
    ledger = stocked((A, 1))
    event = sale(STORE, {A: 3})
    (outcome,) = apply(ledger, event)

    assert outcome.outcome == "applied" and outcome.error is None
    assert numbers(ledger, A) == (-2, 0, 0, 0, 2)
    assert [(a.kind, a.sku, a.on_hand, a.reserved, a.event_id) for a in ledger.alerts] == [
        ("negative_stock", A, -2, 0, event.event_id),
    ]


def test_sale_below_reserved_is_applied_and_puts_reservations_at_risk():
    ledger = stocked((A, 5))
    apply(ledger, reserve(STORE, {A: 4}))
    event = sale(STORE, {A: 3})
    (outcome,) = apply(ledger, event)

    assert outcome.outcome == "applied"
    assert numbers(ledger, A) == (2, 4, 0, 0, 3)
    assert [(a.kind, a.on_hand, a.reserved, a.event_id) for a in ledger.alerts] == [
        ("reservation_at_risk", 2, 4, event.event_id),
    ]


def test_sale_below_zero_with_reservations_raises_both_alerts():
    ledger = stocked((A, 2))
    apply(ledger, reserve(STORE, {A: 2}), sale(STORE, {A: 5}))
    assert numbers(ledger, A) == (-3, 2, 0, 0, 3)
    assert [a.kind for a in ledger.alerts] == ["negative_stock", "reservation_at_risk"]


def test_sale_that_still_covers_reservations_raises_no_alert():
    ledger = stocked((A, 10))
    apply(ledger, reserve(STORE, {A: 4}), sale(STORE, {A: 6}))
    assert numbers(ledger, A) == (4, 4, 0, 0, 3)
    assert ledger.alerts == []


def test_receipt_while_negative_raises_no_alert():
    ledger = stocked((A, -5))
    apply(ledger, receipt(STORE, {A: 2}))
    assert numbers(ledger, A)[0] == -3
    assert ledger.alerts == []


@pytest.mark.parametrize(
    ("on_hand", "held", "at_risk"),
    [
        (10, [("r1", 4), ("r2", 6)], ()),
        (9, [("r1", 4), ("r2", 6)], ("r2",)),
        (5, [("r1", 2), ("r2", 4), ("r3", 3)], ("r2",)),  # r3 still fits in what r2 could not take
        (3, [("r1", 4), ("r2", 1), ("r3", 2)], ("r1",)),
        (0, [("r1", 1), ("r2", 1)], ("r1", "r2")),
        (-4, [("r1", 1), ("r2", 1)], ("r1", "r2")),
        (5, [], ()),
    ],
)
def test_reservations_at_risk_are_named_oldest_first(on_hand, held, at_risk):
    assert reservations_at_risk(on_hand, held) == at_risk


def test_an_at_risk_alert_names_the_holds_as_the_batch_leaves_them():
    """Stored holds the batch never loaded, ones it settled and ones it made, in rule 4's order (oldest first):
    the record names exactly the holds on_hand no longer covers."""
    ledger = stocked((A, 6))
    first, second = reserve(STORE, {A: 2}), reserve(STORE, {A: 2})
    apply(ledger, first)
    ledger.now += timedelta(minutes=1)
    apply(ledger, second)
    stored = [
        HeldLine(
            reservation_id=r.reservation_id,
            qty=2,
            created_at=ledger.reservations[(STORE, r.reservation_id)].created_at,
        )
        for r in (first, second)
    ]
    ledger = stocked(
        (A, 6),
        reservations={(STORE, first.reservation_id): ledger.reservations[(STORE, first.reservation_id)]},
    )
    ledger.positions[(STORE, A)] = Position(location_id=STORE, sku=A, on_hand=6, reserved=4, version=3)
    ledger.now += timedelta(minutes=2)
    newest = reserve(STORE, {A: 1})
    apply(ledger, cancel(STORE, first.reservation_id), newest, sale(STORE, {A: 4}))  # on_hand 2, reserved 3

    assert ledger.positions_at_risk() == {(STORE, A)}
    (alert,) = ledger.changes({(STORE, A): list(reversed(stored))}).alerts  # in any stored order
    assert (alert.kind, alert.on_hand, alert.reserved) == ("reservation_at_risk", 2, 3)
    assert alert.reservation_ids == (newest.reservation_id,)  # second (older) is covered; first is cancelled


# -- rule 5: a reservation is a request, all or nothing ---------------------------------------------------


def test_reservation_is_held_when_every_line_fits():
    ledger = stocked((A, 5), (B, 2), now=0)
    event = reserve(STORE, {A: 5, B: 1}, ttl_seconds=600, channel="staff", reference="order-1")
    (outcome,) = apply(ledger, event)

    assert outcome.outcome == "applied" and outcome.reservation_id == event.reservation_id
    held = ledger.reservations[(STORE, event.reservation_id)]
    assert held.status == "held" and held.channel == "staff" and held.reference == "order-1"
    assert [(line.sku, line.qty) for line in held.lines] == [(A, 5), (B, 1)]
    assert held.created_at == T0 and held.expires_at == T0 + timedelta(seconds=600)
    assert numbers(ledger, A) == (5, 5, 0, 0, 2)
    assert numbers(ledger, B) == (2, 1, 0, 1, 2)
    assert [(m.sku, m.on_hand_delta, m.reserved_delta, m.reservation_id) for m in ledger.movements] == [
        (A, 0, 5, event.reservation_id),
        (B, 0, 1, event.reservation_id),
    ]


def test_reservation_short_on_one_line_is_rejected_whole_with_the_shortages():
    ledger = stocked((A, 5), (B, 2))
    apply(ledger, safety_stock(STORE, B, 1))
    ledger.movements.clear()
    event = reserve(STORE, {A: 5, B: 2, "SKU-NONE": 1})
    (outcome,) = apply(ledger, event)

    assert (outcome.outcome, outcome.error) == ("rejected", "insufficient_stock")
    assert outcome.shortages == (
        Shortage(sku=B, requested=2, available=1),
        Shortage(sku="SKU-NONE", requested=1, available=0),
    )
    assert ledger.movements == []
    assert numbers(ledger, A) == (5, 0, 0, 5, 1)
    assert numbers(ledger, B) == (2, 0, 0, 1, 2)
    assert event.reservation_id not in ledger.reservations


def test_reservation_counts_what_others_already_hold():
    ledger = stocked((A, 3))
    first, second = reserve(STORE, {A: 2}), reserve(STORE, {A: 2})
    outcomes = apply(ledger, first, second)
    assert [o.outcome for o in outcomes] == ["applied", "rejected"]
    assert outcomes[1].shortages == (Shortage(sku=A, requested=2, available=1),)
    assert numbers(ledger, A) == (3, 2, 0, 1, 2)


def test_the_last_unit_goes_to_exactly_one_of_two_requests():
    ledger = stocked((A, 1))
    outcomes = apply(ledger, reserve(STORE, {A: 1}), reserve(STORE, {A: 1}))
    assert [o.outcome for o in outcomes] == ["applied", "rejected"]
    assert [r.status for r in ledger.reservations.values()] == ["held"]
    assert numbers(ledger, A) == (1, 1, 0, 0, 2)


def test_duplicate_skus_in_reservation_lines_are_merged_before_checking():
    ledger = stocked((A, 4))
    (short,) = apply(ledger, reserve(STORE, [(A, 2), (A, 3)]))
    assert short.shortages == (Shortage(sku=A, requested=5, available=4),)

    ledger = stocked((A, 5))
    event = reserve(STORE, [(A, 2), (A, 3)])
    (held,) = apply(ledger, event)
    assert held.outcome == "applied"
    lines = ledger.reservations[(STORE, event.reservation_id)].lines
    assert [(line.sku, line.qty) for line in lines] == [(A, 5)]
    assert [m.reserved_delta for m in ledger.movements] == [5]
    assert numbers(ledger, A) == (5, 5, 0, 0, 2)


def test_a_reservation_id_cannot_be_reserved_twice():
    ledger = stocked((A, 10))
    first = reserve(STORE, {A: 1}, reservation_id="res-1")
    again = reserve(STORE, {A: 2}, reservation_id="res-1")
    outcomes = apply(ledger, first, again)
    assert [(o.outcome, o.error) for o in outcomes] == [("applied", None), ("rejected", "reservation_exists")]
    assert numbers(ledger, A) == (10, 1, 0, 9, 2)


def test_reservation_at_an_unknown_location_is_rejected():
    ledger = stocked((A, 10))
    (outcome,) = apply(ledger, reserve("nowhere", {A: 1}))
    assert (outcome.outcome, outcome.error) == ("rejected", "unknown_location")
    assert ledger.movements == [] and ledger.reservations == {}


# -- rule 6: collect, cancel, leaving held once -----------------------------------------------------------


def held(ledger_lines=((A, 10),), reserved=((A, 3),), ttl_seconds: int = 7200):
    """A ledger with one held reservation; returns (ledger, reservation_id)."""
    ledger = stocked(*ledger_lines)
    event = reserve(STORE, dict(reserved), ttl_seconds=ttl_seconds)
    assert apply(ledger, event)[0].outcome == "applied"
    ledger.movements.clear()
    return ledger, event.reservation_id


def test_collect_turns_the_hold_into_a_sale():
    ledger, rid = held(((A, 10), (B, 4)), ((A, 3), (B, 4)))
    (outcome,) = apply(ledger, collect(STORE, rid))

    assert outcome.outcome == "applied"
    assert ledger.reservations[(STORE, rid)].status == "collected"
    assert numbers(ledger, A) == (7, 0, 0, 7, 3)
    assert numbers(ledger, B) == (0, 0, 0, 0, 3)
    assert [(m.sku, m.on_hand_delta, m.reserved_delta, m.reservation_id) for m in ledger.movements] == [
        (A, -3, -3, rid),
        (B, -4, -4, rid),
    ]
    assert ledger.alerts == []


def test_cancel_releases_the_hold():
    ledger, rid = held()
    (outcome,) = apply(ledger, cancel(STORE, rid))
    assert outcome.outcome == "applied"
    assert ledger.reservations[(STORE, rid)].status == "cancelled"
    assert numbers(ledger, A) == (10, 0, 0, 10, 3)
    assert [(m.on_hand_delta, m.reserved_delta) for m in ledger.movements] == [(0, -3)]


@pytest.mark.parametrize("leave", [collect, cancel])
def test_repeating_collect_or_cancel_answers_the_same_and_moves_nothing(leave):
    ledger, rid = held()
    first = apply(ledger, leave(STORE, rid))[0]
    after_first = numbers(ledger, A)
    moved = len(ledger.movements)

    again = apply(ledger, leave(STORE, rid))[0]  # another event id: a second click, a second till
    assert (first.outcome, again.outcome, again.error) == ("applied", "duplicate", None)
    assert numbers(ledger, A) == after_first
    assert len(ledger.movements) == moved


@pytest.mark.parametrize(
    ("first", "then", "status"), [(cancel, collect, "cancelled"), (collect, cancel, "collected")]
)
def test_a_reservation_leaves_held_once_only(first, then, status):
    ledger, rid = held()
    apply(ledger, first(STORE, rid))
    before, moved = numbers(ledger, A), len(ledger.movements)

    (outcome,) = apply(ledger, then(STORE, rid))
    assert (outcome.outcome, outcome.error) == ("rejected", "reservation_not_held")
    assert ledger.reservations[(STORE, rid)].status == status
    assert numbers(ledger, A) == before and len(ledger.movements) == moved


def test_collect_of_an_unknown_reservation_is_rejected():
    ledger = stocked((A, 10))
    (outcome,) = apply(ledger, collect(STORE, "res-unknown"))
    assert (outcome.outcome, outcome.error, outcome.reservation_id) == (
        "rejected",
        "unknown_reservation",
        "res-unknown",
    )
    assert ledger.movements == []


def test_collect_at_another_location_is_rejected_and_the_hold_stays():
    ledger, rid = held()
    (outcome,) = apply(ledger, collect(OTHER, rid))
    assert (outcome.outcome, outcome.error) == ("rejected", "unknown_reservation")
    assert ledger.reservations[(STORE, rid)].status == "held"
    assert numbers(ledger, A) == (10, 3, 0, 7, 2) and ledger.movements == []


def test_the_same_reservation_id_at_two_locations_is_two_reservations():
    """A key scoped to one store cannot claim the reservation ids the web shop will use at another."""
    ledger = stocked((A, 10))
    ledger.positions[(OTHER, A)] = Position(location_id=OTHER, sku=A, on_hand=10, version=1)
    here = reserve(STORE, {A: 1}, reservation_id="res-1", channel="staff")
    there = reserve(OTHER, {A: 2}, reservation_id="res-1")
    outcomes = apply(ledger, here, there, collect(OTHER, "res-1"))
    assert [(o.outcome, o.error) for o in outcomes] == [("applied", None)] * 3
    assert ledger.reservations[(STORE, "res-1")].status == "held"
    assert ledger.reservations[(OTHER, "res-1")].status == "collected"
    assert numbers(ledger, A) == (10, 1, 0, 9, 2)
    assert numbers(ledger, A, OTHER) == (8, 0, 0, 8, 3)


# -- rule 7: expiry ---------------------------------------------------------------------------------------


def test_expiry_before_it_is_due_moves_nothing():
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(seconds=599)
    (outcome,) = apply(ledger, expire(STORE, rid, at=ledger.now))
    assert (outcome.outcome, outcome.error) == ("rejected", "reservation_not_held")
    assert ledger.reservations[(STORE, rid)].status == "held"
    assert numbers(ledger, A) == (10, 3, 0, 7, 2) and ledger.movements == []


@pytest.mark.parametrize("seconds_late", [0, 1, 86_400])
def test_expiry_when_due_releases_the_hold(seconds_late):
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(seconds=600 + seconds_late)
    (outcome,) = apply(ledger, expire(STORE, rid, at=ledger.now))
    assert outcome.outcome == "applied"
    assert ledger.reservations[(STORE, rid)].status == "expired"
    assert numbers(ledger, A) == (10, 0, 0, 10, 3)
    assert [(m.type, m.on_hand_delta, m.reserved_delta) for m in ledger.movements] == [("expire", 0, -3)]


def test_expiry_is_internal_and_not_recorded_as_an_event():
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(hours=1)
    event = expire(STORE, rid)
    assert apply(ledger, event)[0].outcome == "applied"
    assert key(event) not in ledger.new_records


@pytest.mark.parametrize(("leave", "status"), [(collect, "collected"), (cancel, "cancelled")])
def test_expiry_of_a_settled_reservation_moves_nothing(leave, status):
    ledger, rid = held(ttl_seconds=600)
    apply(ledger, leave(STORE, rid))
    ledger.now = T0 + timedelta(hours=1)
    before, moved = numbers(ledger, A), len(ledger.movements)
    (outcome,) = apply(ledger, expire(STORE, rid))
    assert (outcome.outcome, outcome.error) == ("rejected", "reservation_not_held")
    assert ledger.reservations[(STORE, rid)].status == status
    assert numbers(ledger, A) == before and len(ledger.movements) == moved


def test_expiring_twice_moves_once_and_collect_after_expiry_is_refused():
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(hours=1)
    outcomes = apply(ledger, expire(STORE, rid), expire(STORE, rid), collect(STORE, rid))
    assert [(o.outcome, o.error) for o in outcomes] == [
        ("applied", None),
        ("duplicate", None),
        ("rejected", "reservation_not_held"),
    ]
    assert numbers(ledger, A) == (10, 0, 0, 10, 3)
    assert len(ledger.movements) == 1


@pytest.mark.parametrize("leave", [collect, cancel])
@pytest.mark.parametrize("seconds_late", [0, 1, 86_400])
def test_collect_or_cancel_past_expiry_expires_the_hold_whoever_asks_first(leave, seconds_late):
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(seconds=600 + seconds_late)  # the sweeper has not run yet

    (outcome,) = apply(ledger, leave(STORE, rid, at=ledger.now))
    assert (outcome.outcome, outcome.error) == ("rejected", "reservation_not_held")
    assert ledger.reservations[(STORE, rid)].status == "expired"
    assert numbers(ledger, A) == (10, 0, 0, 10, 3)
    moved = [(m.event_id, m.type, m.on_hand_delta, m.reserved_delta, m.occurred_at) for m in ledger.movements]
    assert moved == [(f"expire:{rid}", "expire", 0, -3, ledger.now)]  # what the sweeper would have written

    late_sweep = apply(ledger, expire(STORE, rid, event_id=f"expire:{rid}", at=ledger.now))[0]
    assert late_sweep.outcome == "duplicate" and len(ledger.movements) == 1


@pytest.mark.parametrize(("leave", "status"), [(collect, "collected"), (cancel, "cancelled")])
def test_collect_or_cancel_a_second_before_expiry_settles_the_hold(leave, status):
    ledger, rid = held(ttl_seconds=600)
    ledger.now = T0 + timedelta(seconds=599)
    (outcome,) = apply(ledger, leave(STORE, rid, at=ledger.now))
    assert outcome.outcome == "applied"
    assert ledger.reservations[(STORE, rid)].status == status


# -- rule 8: returns --------------------------------------------------------------------------------------


def test_return_to_stock_adds_to_on_hand():
    ledger = stocked((A, 1))
    apply(ledger, return_(STORE, {A: 2}))
    assert numbers(ledger, A) == (3, 0, 0, 3, 2)
    assert [(m.on_hand_delta, m.damaged_delta, m.reason) for m in ledger.movements] == [(2, 0, "restock")]


def test_damaged_return_adds_to_damaged_only():
    ledger = stocked((A, 1))
    apply(ledger, return_(STORE, {A: 2}, disposition="damaged"))
    assert numbers(ledger, A) == (1, 0, 2, 1, 2)
    assert [(m.on_hand_delta, m.damaged_delta, m.reason) for m in ledger.movements] == [(0, 2, "damaged")]


# -- rule 9: receipt, adjust, count -----------------------------------------------------------------------


def test_receipt_adds_to_on_hand():
    ledger = stocked((A, 1))
    apply(ledger, receipt(STORE, {A: 12, B: 3}))
    assert numbers(ledger, A) == (13, 0, 0, 13, 2)
    assert numbers(ledger, B) == (3, 0, 0, 3, 1)


@pytest.mark.parametrize(("delta", "reason", "expected"), [(-3, "shrinkage", 7), (4, "found", 14)])
def test_adjust_adds_a_signed_delta_with_its_reason(delta, reason, expected):
    ledger = stocked((A, 10))
    apply(ledger, adjust(STORE, {A: delta}, reason=reason))
    assert numbers(ledger, A)[0] == expected
    assert [(m.on_hand_delta, m.reason) for m in ledger.movements] == [(delta, reason)]


def test_count_sets_on_hand_to_the_counted_quantity():
    ledger = stocked((A, 10))
    (outcome,) = apply(ledger, count(STORE, {A: 7, B: 4}, at=5))
    assert outcome.outcome == "applied"
    assert numbers(ledger, A) == (7, 0, 0, 7, 2)
    assert numbers(ledger, B) == (4, 0, 0, 4, 1)
    assert [(m.sku, m.on_hand_delta, m.reason) for m in ledger.movements] == [
        (A, -3, "count"),
        (B, 4, "count"),
    ]
    assert ledger.position(STORE, A).last_count_at == at(5)


def test_count_keeps_stored_movements_that_happened_after_it():
    """Stored: a receipt of 10 at 0 and a sale of 2 at 10 (on_hand 8). A count of 7 made at 5 means 5 now."""
    probes = []

    def stored_on_hand_after(key, when):
        probes.append((key, when))
        return -2 if when < at(10) else 0

    ledger = stocked((A, 8), stored_on_hand_after=stored_on_hand_after)
    apply(ledger, count(STORE, {A: 7}, at=5))
    assert numbers(ledger, A)[0] == 5
    assert [m.on_hand_delta for m in ledger.movements] == [-3]
    assert probes == [((STORE, A), at(5))]


def test_count_keeps_movements_of_the_same_batch_that_happened_after_it():
    ledger = new_ledger(STORE)
    apply(ledger, receipt(STORE, {A: 10}, at=0), sale(STORE, {A: 2}, at=10), count(STORE, {A: 7}, at=5))
    assert numbers(ledger, A)[0] == 5
    assert ledger.movements[-1].on_hand_delta == -3


def test_count_absorbs_movements_of_the_same_batch_that_happened_before_it():
    ledger = new_ledger(STORE)
    apply(ledger, receipt(STORE, {A: 10}, at=0), sale(STORE, {A: 2}, at=3), count(STORE, {A: 7}, at=5))
    assert numbers(ledger, A)[0] == 7


@pytest.mark.parametrize(
    "older",
    [
        lambda: sale(STORE, {A: 2}, at=4),
        lambda: return_(STORE, {A: 2}, at=4),
        lambda: adjust(STORE, {A: -2}, reason="shrinkage", at=4),
        lambda: adjust(STORE, {A: 2}, reason="found", at=4),
    ],
    ids=["sale", "return", "adjust-down", "adjust-up"],
)
def test_a_change_older_than_the_latest_count_is_recorded_with_delta_0(older):
    ledger = stocked((A, 10))
    apply(ledger, count(STORE, {A: 6}, at=5))
    event = older()
    (outcome,) = apply(ledger, event)

    assert outcome.outcome == "applied"
    assert numbers(ledger, A) == (6, 0, 0, 6, 3)
    last = ledger.movements[-1]
    assert (last.event_id, last.on_hand_delta, last.superseded_by_count) == (event.event_id, 0, True)
    assert ledger.alerts == []


def test_a_change_newer_than_the_latest_count_is_applied():
    ledger = stocked((A, 10))
    apply(ledger, count(STORE, {A: 6}, at=5), sale(STORE, {A: 2}, at=6))
    assert numbers(ledger, A)[0] == 4
    assert ledger.movements[-1].superseded_by_count is False


def test_a_damaged_return_older_than_a_count_still_adds_to_damaged():
    ledger = stocked((A, 10))
    apply(ledger, count(STORE, {A: 6}, at=5), return_(STORE, {A: 1}, disposition="damaged", at=4))
    assert numbers(ledger, A) == (6, 0, 1, 6, 3)


def test_a_collect_older_than_a_count_releases_the_hold_the_count_already_saw_leave():
    ledger, rid = held(((A, 10),), ((A, 3),))
    apply(ledger, count(STORE, {A: 7}, at=5), collect(STORE, rid, at=4))
    assert numbers(ledger, A) == (7, 0, 0, 7, 4)
    assert (ledger.movements[-1].on_hand_delta, ledger.movements[-1].reserved_delta) == (0, -3)
    assert ledger.movements[-1].superseded_by_count is True


@pytest.mark.parametrize("older_minutes", [4, 5], ids=["older", "same-instant"])
def test_a_count_no_newer_than_the_latest_count_is_superseded(older_minutes):
    ledger = stocked((A, 10))
    apply(ledger, count(STORE, {A: 6}, at=5), count(STORE, {A: 9}, at=older_minutes))
    assert numbers(ledger, A) == (6, 0, 0, 6, 3)
    assert ledger.position(STORE, A).last_count_at == at(5)
    last = ledger.movements[-1]
    assert (last.on_hand_delta, last.superseded_by_count, last.reason) == (0, True, "count")


def test_a_newer_count_replaces_the_older_one():
    ledger = stocked((A, 10))
    apply(ledger, count(STORE, {A: 6}, at=5), sale(STORE, {A: 1}, at=6), count(STORE, {A: 3}, at=8))
    assert numbers(ledger, A)[0] == 3
    assert ledger.position(STORE, A).last_count_at == at(8)


def test_a_sale_at_the_instant_of_the_count_counts_the_same_whatever_arrives_first():
    """Only changes *earlier* than a count are superseded: one at its instant is after it, either way."""
    before = new_ledger(STORE)
    apply(before, receipt(STORE, {A: 10}, at=0), sale(STORE, {A: 2}, at=5), count(STORE, {A: 6}, at=5))
    after = new_ledger(STORE)
    apply(after, receipt(STORE, {A: 10}, at=0), count(STORE, {A: 6}, at=5), sale(STORE, {A: 2}, at=5))
    assert numbers(after, A)[0] == 4
    assert numbers(before, A)[0] == numbers(after, A)[0]


# -- rule 10: exactly-once effect -------------------------------------------------------------------------


def test_the_same_event_twice_moves_stock_once_and_answers_duplicate():
    ledger = stocked((A, 10))
    event = sale(STORE, {A: 3})
    outcomes = apply(ledger, event, event)

    assert [o.outcome for o in outcomes] == ["applied", "duplicate"]
    assert outcomes[1].event_id == event.event_id and outcomes[1].error is None
    assert numbers(ledger, A) == (7, 0, 0, 7, 2)
    assert len(ledger.movements) == 1
    assert ledger.new_records[key(event)].outcome.outcome == "applied"


def test_a_repeat_in_a_later_transaction_is_answered_from_the_record():
    first = stocked((A, 10))
    event = sale(STORE, {A: 3})
    apply(first, event)

    later = stocked((A, 7), recorded=first.new_records, now=60)
    (outcome,) = apply(later, event)
    assert (outcome.outcome, outcome.recorded_at) == ("duplicate", at(60))
    assert later.movements == [] and later.new_records == {}
    assert numbers(later, A)[0] == 7


def test_a_repeat_of_a_rejected_event_is_rejected_again_with_the_same_error():
    ledger = stocked((A, 1))
    event = reserve(STORE, {A: 2})
    outcomes = apply(ledger, event, event)
    assert [(o.outcome, o.error) for o in outcomes] == [("rejected", "insufficient_stock")] * 2
    assert outcomes[1].shortages == (Shortage(sku=A, requested=2, available=1),)
    assert ledger.movements == []


def test_a_repeated_reserve_is_a_duplicate_not_a_second_hold():
    ledger = stocked((A, 10))
    event = reserve(STORE, {A: 4})
    outcomes = apply(ledger, event, event)
    assert [(o.outcome, o.error) for o in outcomes] == [("applied", None), ("duplicate", None)]
    assert numbers(ledger, A) == (10, 4, 0, 6, 2)


@pytest.mark.parametrize(
    "first", [lambda: sale(STORE, {A: 3}), lambda: sale("nowhere", {A: 3})], ids=["applied", "rejected"]
)
def test_the_same_event_id_with_another_body_is_a_conflict_and_moves_nothing(first):
    ledger = stocked((A, 10))
    event = first()
    apply(ledger, event)
    before, moved, record = numbers(ledger, A), len(ledger.movements), ledger.new_records[key(event)]

    (outcome,) = apply(ledger, other_body(event))
    assert (outcome.outcome, outcome.error, outcome.event_id) == (
        "rejected",
        "event_id_conflict",
        event.event_id,
    )
    assert numbers(ledger, A) == before and len(ledger.movements) == moved
    assert ledger.new_records[key(event)] == record


def test_the_same_event_id_at_two_locations_is_two_events_both_applied():
    """Rule 10: an event is its location and id, so one store's id cannot block another's till."""
    claimed = sale(OTHER, {A: 1})
    real = sale(STORE, {A: 3}, event_id=claimed.event_id)
    earlier = stocked((A, 10))
    apply(earlier, claimed)

    ledger = stocked((A, 10), recorded=earlier.new_records)
    (outcome,) = apply(ledger, real)
    assert (outcome.outcome, outcome.error, outcome.location_id) == ("applied", None, STORE)
    assert numbers(ledger, A) == (7, 0, 0, 7, 2)
    assert set(ledger.new_records) == {key(real)}
    assert [o.outcome for o in apply(ledger, real, claimed)] == ["duplicate", "duplicate"]


def test_a_conflict_with_a_record_from_an_earlier_transaction():
    event = sale(STORE, {A: 3})
    recorded = {key(event): RecordedEvent(body_hash=hash_of(event), outcome=apply(stocked(), event)[0])}
    ledger = stocked((A, 7), recorded=recorded)
    outcomes = apply(ledger, other_body(event), event)
    assert [(o.outcome, o.error) for o in outcomes] == [
        ("rejected", "event_id_conflict"),
        ("duplicate", None),
    ]
    assert ledger.movements == [] and ledger.new_records == {}


# -- rule 11: a rejected event moves nothing and is recorded ----------------------------------------------


def test_rejected_events_move_nothing_and_are_recorded():
    ledger, rid = held(((A, 2),), ((A, 1),))
    events = {
        "unknown_location": sale("nowhere", {A: 1}),
        "unknown_reservation": cancel(STORE, "res-missing"),
        "insufficient_stock": reserve(STORE, {A: 2}),
    }
    outcomes = apply(ledger, *events.values())

    assert [(o.outcome, o.error) for o in outcomes] == [("rejected", code) for code in events]
    assert ledger.movements == []
    assert numbers(ledger, A) == (2, 1, 0, 1, 2)
    assert ledger.reservations[(STORE, rid)].status == "held"
    for code, event in events.items():
        record = ledger.new_records[key(event)].outcome
        assert (record.outcome, record.error, record.type) == ("rejected", code, event.type)
        assert record.detail
        assert ledger.new_records[key(event)].body_hash == hash_of(event)
    assert ledger.new_records[key(events["insufficient_stock"])].outcome.shortages == (
        Shortage(sku=A, requested=2, available=1),
    )


def test_applied_events_are_recorded_with_their_body_hash():
    ledger = new_ledger(STORE)
    event = receipt(STORE, {A: 1})
    apply(ledger, event)
    record = ledger.new_records[key(event)]
    assert record.body_hash == hash_of(event)
    assert (record.outcome.outcome, record.outcome.type, record.outcome.location_id) == (
        "applied",
        "receipt",
        STORE,
    )


# -- safety stock -----------------------------------------------------------------------------------------


def test_setting_safety_stock_is_a_change_with_zero_deltas():
    ledger = stocked((A, 10))
    (outcome,) = apply(ledger, safety_stock(STORE, A, 4))
    assert outcome.outcome == "applied"
    position = ledger.position(STORE, A)
    assert (position.safety_stock, position.available, position.version) == (4, 6, 2)
    assert [(m.on_hand_delta, m.reserved_delta, m.damaged_delta, m.reason) for m in ledger.movements] == [
        (0, 0, 0, "safety_stock"),
    ]
    assert ledger.new_records == {}


def test_safety_stock_limits_what_may_be_reserved():
    ledger = stocked((A, 10))
    outcomes = apply(ledger, safety_stock(STORE, A, 4), reserve(STORE, {A: 7}), reserve(STORE, {A: 6}))
    assert [o.outcome for o in outcomes] == ["applied", "rejected", "applied"]
    assert outcomes[1].shortages == (Shortage(sku=A, requested=7, available=6),)
    assert numbers(ledger, A) == (10, 6, 0, 0, 3)


def test_safety_stock_at_an_unknown_location_is_refused():
    ledger = new_ledger(STORE)
    (outcome,) = apply(ledger, safety_stock("nowhere", A, 4))
    assert (outcome.outcome, outcome.error) == ("rejected", "unknown_location")
    assert ledger.movements == []
