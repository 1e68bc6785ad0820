"""The wire module: every subject it builds parses back to what built it, and a message id names the
location wherever it names an event (rule 10)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stocksync import wire
from stocksync.domain.events import INBOUND_TYPES

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@given(location=ids, event_type=st.sampled_from(sorted(INBOUND_TYPES)))
def test_an_inbound_subject_parses_back_to_its_location_and_type(location: str, event_type: str) -> None:
    subject = wire.inbound_subject(location, event_type)
    assert wire.inbound_parts(subject) == (location, event_type)
    assert wire.subject_location(subject) == location
    assert subject.startswith(wire.IN_ALL.rstrip(">"))


@given(location=ids, sku=ids, reservation=ids)
def test_every_outbound_subject_names_what_it_is_about(location: str, sku: str, reservation: str) -> None:
    assert wire.outbound_target(wire.availability_subject(location, sku)) == (location, sku, None)
    assert wire.outbound_target(wire.alert_subject(location)) == (location, None, None)
    assert wire.outbound_target(wire.outcome_subject(location)) == (location, None, None)
    assert wire.outbound_target(wire.reservation_subject(reservation)) == (None, None, reservation)
    assert wire.split_availability_key(wire.availability_key(location, sku)) == (location, sku)


@pytest.mark.parametrize(
    "subject", ["stocksync.in.a", "stocksync.in.a.sale.x", "stocksync.out.a.sale", "other.in.a.sale"]
)
def test_other_shapes_are_not_inbound_subjects(subject: str) -> None:
    assert wire.inbound_parts(subject) is None


def test_a_dead_letter_subject_names_its_location_or_none() -> None:
    assert wire.dlq_subject("store-1") == "stocksync.dlq.store-1"
    assert wire.dlq_subject(None) == f"stocksync.dlq.{wire.NO_LOCATION}"
    assert wire.subject_location("stocksync.in.bad location.sale") is None


def test_message_ids_that_name_an_event_name_its_location() -> None:
    """The same event id at two stores is two events: their messages must not collapse into one."""
    for make in (wire.outcome_msg_id, wire.reservation_msg_id):
        assert make("store-a", "e-1", "applied") != make("store-b", "e-1", "applied")
    assert wire.alert_msg_id("a", "e-1", "S", "negative_stock", -1) != wire.alert_msg_id(
        "b", "e-1", "S", "negative_stock", -1
    )


def test_a_key_connects_with_its_own_inbox() -> None:
    key = "ssk_0123456789ab_" + "s_" * 21 + "x"
    assert wire.key_options(key) == {"token": key, "inbox_prefix": "_INBOX_0123456789ab"}
    assert wire.key_options(None) == {}
