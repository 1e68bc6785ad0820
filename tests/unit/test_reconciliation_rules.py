"""The reconciliation's rules as plain functions: what is a discrepancy, how a count file line is read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stocksync.domain.reconciliation import (
    COUNT_DIFFERENCE,
    DAMAGED_MISMATCH,
    EVENT_WITHOUT_OUTCOME,
    KV_MISSING,
    KV_STALE,
    KV_UNKNOWN,
    ON_HAND_MISMATCH,
    POSITION_MISSING,
    RESERVATION_AT_RISK,
    RESERVATION_OVERDUE,
    RESERVED_MISMATCH,
    VERSION_MISMATCH,
    BadInput,
    CountRow,
    Finding,
    Numbers,
    PositionTotals,
    Tally,
    at_risk_findings,
    count_event,
    count_event_id,
    count_finding,
    count_header,
    entry_problem,
    exit_code,
    integrity_findings,
    kv_finding,
    ledger_numbers,
    lost_event_finding,
    overdue_finding,
    parse_count_row,
)
from stocksync.wire import outbound_target, split_availability_key, subject_location

NOW = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)
STORE, SKU = "store-001", "SKU-1"


def totals(**changes: int | None) -> PositionTotals:
    """A consistent position (on_hand 10 from 3 movements, 2 held), with ``changes`` applied."""
    fields: dict = dict(
        location_id=STORE,
        sku=SKU,
        on_hand=10,
        reserved=2,
        damaged=1,
        version=3,
        movement_on_hand=10,
        movement_reserved=2,
        movement_damaged=1,
        movements=3,
        held=2,
    )
    return PositionTotals(**{**fields, **changes})


# -- 1. ledger integrity -----------------------------------------------------------------------------------------


def test_a_consistent_position_has_no_finding() -> None:
    assert integrity_findings(totals()) == []


def test_on_hand_edited_behind_the_ledgers_back_is_named_with_both_numbers() -> None:
    [finding] = integrity_findings(totals(on_hand=13))
    assert (finding.kind, finding.location_id, finding.sku, finding.expected, finding.actual) == (
        ON_HAND_MISMATCH,
        STORE,
        SKU,
        10,
        13,
    )


def test_reserved_is_checked_against_held_lines_and_against_movements() -> None:
    assert [f.detail for f in integrity_findings(totals(held=5))] == [
        "reserved differs from its held reservation lines"
    ]
    assert [f.detail for f in integrity_findings(totals(movement_reserved=1))] == [
        "reserved differs from the sum of its movements"
    ]
    assert {f.kind for f in integrity_findings(totals(reserved=7))} == {RESERVED_MISMATCH}


def test_movements_without_a_position_row_are_one_finding() -> None:
    missing = totals(on_hand=None, reserved=None, damaged=None, version=None)
    [finding] = integrity_findings(missing)
    assert (finding.kind, finding.expected) == (POSITION_MISSING, 3)


@given(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3))
def test_each_stored_number_that_differs_gives_its_own_kind(
    on_hand: int, damaged: int, version: int, reserved: int
) -> None:
    found = integrity_findings(
        totals(on_hand=10 + on_hand, damaged=1 + damaged, version=3 + version, reserved=2 + reserved)
    )
    expected = {
        kind
        for kind, delta in (
            (ON_HAND_MISMATCH, on_hand),
            (DAMAGED_MISMATCH, damaged),
            (VERSION_MISMATCH, version),
            (RESERVED_MISMATCH, reserved),
        )
        if delta
    }
    assert {f.kind for f in found} == expected


# -- 2. reservations -------------------------------------------------------------------------------------------


def test_at_risk_names_the_holds_on_hand_no_longer_covers_oldest_first() -> None:
    held = [("res-a", 2), ("res-b", 2), ("res-c", 1)]
    findings = at_risk_findings(STORE, SKU, 3, held)
    assert [(f.kind, f.reservation_id, f.expected, f.actual) for f in findings] == [
        (RESERVATION_AT_RISK, "res-b", 2, 3)
    ]
    assert [f.reservation_id for f in at_risk_findings(STORE, SKU, -1, held)] == ["res-a", "res-b", "res-c"]


def test_an_overdue_reservation_names_its_sku_when_it_has_one() -> None:
    one = overdue_finding("res-1", STORE, NOW, [SKU], [2])
    two = overdue_finding("res-2", STORE, NOW, [SKU, "SKU-2"], [2, 1])
    assert (one.kind, one.sku, one.reservation_id, one.actual) == (RESERVATION_OVERDUE, SKU, "res-1", 2)
    assert two.sku is None and "SKU-1x2, SKU-2x1" in two.detail


# -- 3. events -------------------------------------------------------------------------------------------------


def test_a_lost_event_names_the_location_of_its_subject_and_its_sku() -> None:
    subject = f"stocksync.in.{STORE}.sale"
    finding = lost_event_finding(
        subject=subject,
        location_id=subject_location(subject),
        sequence=7,
        event_id="e-1",
        skus=[SKU],
        qtys=[2],
        acknowledged=False,
    )
    assert (finding.kind, finding.location_id, finding.sku) == (EVENT_WITHOUT_OUTCOME, STORE, SKU)
    assert "sequence 7" in finding.detail and "not acknowledged" in finding.detail


# -- 4. outbox and bucket -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "target"),
    [
        (f"stocksync.out.availability.{STORE}.{SKU}", (STORE, SKU, None)),
        (f"stocksync.out.alert.{STORE}", (STORE, None, None)),
        (f"stocksync.out.outcome.{STORE}", (STORE, None, None)),
        ("stocksync.out.reservation.res-1", (None, None, "res-1")),
        ("something.else", (None, None, None)),
    ],
)
def test_outbox_subjects_name_what_they_are_about(subject: str, target: tuple) -> None:
    assert outbound_target(subject) == target


LEDGER = ledger_numbers(on_hand=10, reserved=2, damaged=0, safety_stock=1, version=4)


def test_ledger_numbers_follow_rule_1() -> None:
    assert LEDGER.available == 7
    assert ledger_numbers(1, 5, 0, 0, 1).available == 0


def test_a_bucket_entry_equal_to_the_ledger_is_fine() -> None:
    assert kv_finding(STORE, SKU, LEDGER, LEDGER) is None


def test_a_bucket_entry_with_other_numbers_at_the_same_version_is_stale_even_in_flight() -> None:
    entry = Numbers(**{**_fields(LEDGER), "on_hand": 15, "available": 12})
    finding = kv_finding(STORE, SKU, LEDGER, entry, in_flight=True)
    assert finding is not None and (finding.kind, finding.expected, finding.actual) == (KV_STALE, 4, 4)


def test_an_older_entry_or_none_is_only_a_finding_once_the_change_is_out_of_its_grace() -> None:
    older = Numbers(**{**_fields(LEDGER), "version": 3})
    assert kv_finding(STORE, SKU, LEDGER, older, in_flight=True) is None
    assert kv_finding(STORE, SKU, LEDGER, None, in_flight=True) is None
    assert kv_finding(STORE, SKU, LEDGER, older).kind == KV_STALE  # type: ignore[union-attr]
    assert kv_finding(STORE, SKU, LEDGER, None).kind == KV_MISSING  # type: ignore[union-attr]


def test_an_entry_for_no_position_or_one_that_cannot_be_trusted_is_reported() -> None:
    assert kv_finding(STORE, SKU, None, LEDGER).kind == KV_UNKNOWN  # type: ignore[union-attr]
    inconsistent = Numbers(**{**_fields(LEDGER), "available": 9})
    problem = entry_problem(inconsistent)
    assert problem is not None and "rule 1" in problem
    assert kv_finding(STORE, SKU, LEDGER, None, problem=problem).kind == KV_STALE  # type: ignore[union-attr]
    assert entry_problem(None) is not None and entry_problem(LEDGER) is None


def test_bucket_keys_split_into_location_and_sku() -> None:
    assert split_availability_key(f"{STORE}.{SKU}") == (STORE, SKU)
    assert split_availability_key("no-dot") is None and split_availability_key("a.b.c") is None


def _fields(numbers: Numbers) -> dict:
    return {name: getattr(numbers, name) for name in Numbers.__struct_fields__}


# -- 5. store counts ------------------------------------------------------------------------------------------------

LOCATIONS = {STORE}


def row(**changes: str) -> dict[str, str]:
    return {
        "location_id": STORE,
        "sku": SKU,
        "counted": "4",
        "counted_at": "2026-11-23T21:00:00+01:00",
        **changes,
    }


def parse(fields: dict[str, str], *, has_cost: bool = False) -> CountRow:
    return parse_count_row(5, fields, locations=LOCATIONS, now=NOW, has_cost=has_cost)


def test_the_header_must_name_every_column_and_may_add_cost() -> None:
    assert count_header(["location_id", "sku", "counted", "counted_at"]) is False
    assert count_header([" location_id", "sku", "counted", "counted_at", "cost"]) is True
    with pytest.raises(BadInput) as missing:
        count_header(["location_id", "sku", "counted"])
    assert missing.value.line == 1 and "missing column counted_at" in str(missing.value)
    with pytest.raises(BadInput):
        count_header(None)


def test_a_good_row_reads_as_the_count_it_states() -> None:
    parsed = parse(row(cost="2.50"), has_cost=True)
    assert (parsed.line, parsed.counted, parsed.cost) == (5, 4, Decimal("2.50"))
    assert parsed.counted_at == datetime(2026, 11, 23, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"counted": "-3"}, "counted must not be negative, got -3"),
        ({"counted": "three"}, "counted must be a whole number"),
        ({"counted": ""}, "counted is empty"),
        ({"location_id": "store-x"}, "unknown location 'store-x'"),
        ({"sku": "bad sku"}, "sku 'bad sku' is not a valid id"),
        ({"counted_at": "2026-13-01T10:00:00Z"}, "counted_at is not an ISO 8601 date and time"),
        ({"counted_at": "2026-11-23T10:00:00"}, "has no time zone"),
        ({"counted_at": "2026-11-24T10:00:00Z"}, "is in the future"),
        ({"cost": "cheap"}, "cost must be a number"),
        ({"cost": "-1"}, "cost must be a non-negative number"),
    ],
)
def test_a_bad_row_names_its_line_and_what_is_wrong(changes: dict[str, str], message: str) -> None:
    with pytest.raises(BadInput) as bad:
        parse(row(**changes), has_cost=True)
    assert bad.value.line == 5 and message in str(bad.value)


def count_row(counted: int, cost: str | None = None) -> CountRow:
    return CountRow(
        line=9,
        location_id=STORE,
        sku=SKU,
        counted=counted,
        counted_at=NOW,
        cost=Decimal(cost) if cost else None,
    )


def test_a_count_equal_to_the_ledger_is_no_finding() -> None:
    assert count_finding(count_row(7), 7, None) is None


def test_a_difference_is_valued_at_cost_when_the_file_gives_one() -> None:
    finding = count_finding(count_row(4, "2.50"), 7, None)
    assert finding is not None
    assert (finding.kind, finding.expected, finding.actual, finding.value_at_cost) == (
        COUNT_DIFFERENCE,
        7,
        4,
        Decimal("-7.50"),
    )
    assert count_finding(count_row(9), 7, None).value_at_cost is None  # type: ignore[union-attr]


def test_a_count_a_newer_count_supersedes_says_so() -> None:
    finding = count_finding(count_row(4), 7, NOW + timedelta(minutes=1))
    assert finding is not None and "a newer count" in finding.detail


def test_count_events_are_named_by_the_files_digest_and_line() -> None:
    digest = "ab" * 32
    assert count_event_id(digest, 9) == f"reconcile:{'ab' * 8}:9"
    event = count_event(count_row(4), digest, "reconcile counts.csv")
    assert (event.event_id, event.location_id, event.occurred_at, event.lines[0].counted) == (
        count_event_id(digest, 9),
        STORE,
        NOW,
        4,
    )


# -- the summary --------------------------------------------------------------------------------------------------


def test_the_tally_counts_keeps_a_few_examples_and_counts_reservations_by_store() -> None:
    tally = Tally(examples=2)
    tally.extend(
        [
            Finding(kind=RESERVATION_AT_RISK, location_id=STORE, sku=SKU, reservation_id="res-1"),
            Finding(kind=RESERVATION_AT_RISK, location_id=STORE, sku="SKU-2", reservation_id="res-1"),
            Finding(kind=RESERVATION_AT_RISK, location_id=STORE, sku=SKU, reservation_id="res-2"),
            Finding(kind=COUNT_DIFFERENCE, value_at_cost=Decimal("1.5"), repaired=True),
            Finding(kind=COUNT_DIFFERENCE, value_at_cost=Decimal("-4")),
        ]
    )
    assert tally.found == {RESERVATION_AT_RISK: 3, COUNT_DIFFERENCE: 2}
    assert tally.repaired == {COUNT_DIFFERENCE: 1}
    assert len(tally.first[RESERVATION_AT_RISK]) == 2
    assert tally.by_store() == {RESERVATION_AT_RISK: {STORE: 2}}
    assert tally.value_at_cost == Decimal("-2.5")
    assert exit_code(tally) == 1 and exit_code(Tally()) == 0
