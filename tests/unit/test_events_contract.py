"""The inbound event contract (spec section 3): what `decode_inbound` accepts, what it refuses, and where."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from stocksync.domain.events import (
    Adjust,
    Cancel,
    Collect,
    Count,
    Receipt,
    Reserve,
    Return,
    Sale,
    decode_inbound,
    encode,
)

SPEC_EXAMPLE = b"""{"event_id": "store-001:till-3:000123", "type": "sale", "location_id": "store-001",
 "occurred_at": "2026-11-23T10:15:00Z", "source": "pos:store-001:till-3", "reference": "receipt-98765",
 "lines": [{"sku": "SKU-123", "qty": 2}]}"""


def body(type_: str = "sale", **fields: Any) -> bytes:
    """A valid body of ``type_``, with ``fields`` replaced (a value of ``...`` removes the field)."""
    lines = {
        "sale": [{"sku": "SKU-1", "qty": 1}],
        "return": [{"sku": "SKU-1", "qty": 1}],
        "receipt": [{"sku": "SKU-1", "qty": 1}],
        "adjust": [{"sku": "SKU-1", "delta": -1, "reason": "shrinkage"}],
        "count": [{"sku": "SKU-1", "counted": 0}],
        "reserve": [{"sku": "SKU-1", "qty": 1}],
    }
    document: dict[str, Any] = {
        "event_id": "e-1",
        "type": type_,
        "location_id": "store-001",
        "occurred_at": "2026-11-23T10:15:00Z",
    }
    if type_ in lines:
        document["lines"] = lines[type_]
    if type_ in ("reserve", "collect", "cancel"):
        document["reservation_id"] = "web:order-1_A+b"
    if type_ == "reserve":
        document["channel"] = "ecommerce"
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def refused(raw: bytes, path: str | None) -> str:
    """The ValidationError message, which names the path (``None``: a top-level field, named in the text)."""
    with pytest.raises(msgspec.ValidationError) as error:
        decode_inbound(raw)
    message = str(error.value)
    if path is not None:
        assert message.endswith(f"at `{path}`"), message
    return message


# -- accepted ---------------------------------------------------------------------------------------------


def test_the_spec_example_is_accepted():
    event = decode_inbound(SPEC_EXAMPLE)
    assert isinstance(event, Sale) and event.type == "sale"
    assert (event.event_id, event.location_id, event.source, event.reference) == (
        "store-001:till-3:000123",
        "store-001",
        "pos:store-001:till-3",
        "receipt-98765",
    )
    assert event.occurred_at == datetime(2026, 11, 23, 10, 15, tzinfo=UTC)
    assert [(line.sku, line.qty) for line in event.lines] == [("SKU-123", 2)]


@pytest.mark.parametrize(
    ("type_", "cls"),
    [
        ("sale", Sale),
        ("return", Return),
        ("receipt", Receipt),
        ("adjust", Adjust),
        ("count", Count),
        ("reserve", Reserve),
        ("collect", Collect),
        ("cancel", Cancel),
    ],
)
def test_every_inbound_type_decodes_to_its_struct_whose_type_is_the_tag(type_, cls):
    event = decode_inbound(body(type_))
    assert type(event) is cls
    assert event.type == type_
    assert decode_inbound(encode(event)) == event


def test_defaults_return_restocks_reserve_lives_two_hours_collect_has_no_lines():
    assert decode_inbound(body("return")).lines[0].disposition == "restock"
    assert (
        decode_inbound(body("return", lines=[{"sku": "S", "qty": 1, "disposition": "damaged"}]))
        .lines[0]
        .disposition
        == "damaged"
    )
    assert decode_inbound(body("reserve")).ttl_seconds == 7200
    assert decode_inbound(body("collect")).lines == []
    assert decode_inbound(body("cancel", lines=[])).lines == []


@pytest.mark.parametrize(
    "fields",
    [
        {"lines": [{"sku": "SKU-1", "qty": 100_000}]},
        {"lines": [{"sku": f"SKU-{i}", "qty": 1} for i in range(500)]},
        {"event_id": "x" * 128},
        {"event_id": " !~:/store 1"},
        {"location_id": "a" * 64},
        {"location_id": "S_1-x"},
        {"lines": [{"sku": "9" + "z" * 63, "qty": 1}]},
        {"occurred_at": "2026-11-23T11:15:00+01:00"},
    ],
    ids=[
        "qty-100000",
        "500-lines",
        "event-id-128",
        "printable-event-id",
        "location-64",
        "location-chars",
        "sku-64",
        "offset-time",
    ],
)
def test_the_limits_themselves_are_accepted(fields):
    assert decode_inbound(body("sale", **fields)).type == "sale"


@pytest.mark.parametrize("ttl", [60, 604_800])
def test_ttl_limits_are_accepted(ttl):
    assert decode_inbound(body("reserve", ttl_seconds=ttl)).ttl_seconds == ttl


# -- refused, naming the field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"lines": [{"sku": "SKU-1", "qty": "2"}]}, "$.lines[0].qty"),
        ({"lines": [{"sku": "SKU-1", "qty": 1.5}]}, "$.lines[0].qty"),
        ({"lines": [{"sku": 123, "qty": 1}]}, "$.lines[0].sku"),
        ({"location_id": 5}, "$.location_id"),
        ({"event_id": None}, "$.event_id"),
        ({"occurred_at": 1700000000}, "$.occurred_at"),
        ({"occurred_at": "yesterday"}, "$.occurred_at"),
        ({"lines": {"sku": "SKU-1", "qty": 1}}, "$.lines"),
        ({"reference": ["a"]}, "$.reference"),
        ({"source": "x" * 257}, "$.source"),
    ],
    ids=[
        "qty-str",
        "qty-float",
        "sku-int",
        "location-int",
        "event-id-null",
        "time-int",
        "time-text",
        "lines-object",
        "reference-list",
        "source-too-long",
    ],
)
def test_wrong_types_are_refused(fields, path):
    refused(body("sale", **fields), path)


@pytest.mark.parametrize(
    ("type_", "missing"),
    [
        ("sale", "event_id"),
        ("sale", "location_id"),
        ("sale", "occurred_at"),
        ("sale", "lines"),
        ("reserve", "reservation_id"),
        ("reserve", "channel"),
        ("collect", "reservation_id"),
    ],
)
def test_missing_fields_are_refused(type_, missing):
    message = refused(body(type_, **{missing: ...}), None)
    assert f"missing required field `{missing}`" in message


def test_a_line_missing_its_quantity_is_refused():
    assert "missing required field `qty`" in refused(body("sale", lines=[{"sku": "SKU-1"}]), "$.lines[0]")


@pytest.mark.parametrize("qty", [0, -1, 100_001])
def test_quantity_out_of_1_to_100000_is_refused(qty):
    refused(body("sale", lines=[{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-2", "qty": qty}]), "$.lines[1].qty")


def test_no_lines_or_more_than_500_lines_are_refused():
    refused(body("sale", lines=[]), "$.lines")
    refused(body("receipt", lines=[{"sku": f"SKU-{i}", "qty": 1} for i in range(501)]), "$.lines")


@pytest.mark.parametrize(
    "bad", ["", "-store", "_store", "store.1", "store 1", "store/1", "störe", "a" * 65, "s*"]
)
def test_bad_location_and_sku_ids_are_refused(bad):
    refused(body("sale", location_id=bad), "$.location_id")
    refused(body("sale", lines=[{"sku": bad, "qty": 1}]), "$.lines[0].sku")


@pytest.mark.parametrize("bad", ["", "x" * 129, "till\n3", "bell\x07", "tab\there", "caf\u00e9", "del\x7f"])
def test_event_id_over_128_chars_or_not_printable_ascii_is_refused(bad):
    refused(body("sale", event_id=bad), "$.event_id")


def test_naive_occurred_at_is_refused():
    assert "timezone" in refused(body("sale", occurred_at="2026-11-23T10:15:00"), "$.occurred_at")


def test_adjust_delta_of_zero_is_refused():
    assert "non-zero" in refused(
        body("adjust", lines=[{"sku": "S", "delta": 0, "reason": "found"}]), "$.lines[0]"
    )


@pytest.mark.parametrize(
    ("type_", "line", "path"),
    [
        ("adjust", {"sku": "S", "delta": 1, "reason": "theft"}, "$.lines[0].reason"),
        ("adjust", {"sku": "S", "delta": 100_001, "reason": "found"}, "$.lines[0].delta"),
        ("return", {"sku": "S", "qty": 1, "disposition": "lost"}, "$.lines[0].disposition"),
        ("count", {"sku": "S", "counted": -1}, "$.lines[0].counted"),
    ],
)
def test_line_fields_out_of_their_domain_are_refused(type_, line, path):
    refused(body(type_, lines=[line]), path)


@pytest.mark.parametrize("type_", ["transfer", "SALE", "expire", "safety_stock", ""])
def test_unknown_and_internal_types_are_refused(type_):
    refused(body("sale", type=type_), "$.type")


def test_a_body_without_type_is_refused():
    assert "missing required field `type`" in refused(body("sale", type=...), None)


@pytest.mark.parametrize(
    "bad", ["order.1", "order*", "order>", "order 1", "order/1", "", "x" * 129, "caf\u00e9"]
)
@pytest.mark.parametrize("type_", ["reserve", "collect", "cancel"])
def test_reservation_ids_that_are_not_safe_subject_tokens_are_refused(type_, bad):
    refused(body(type_, reservation_id=bad), "$.reservation_id")


@pytest.mark.parametrize("ttl", [59, 0, -1, 604_801])
def test_ttl_outside_60_to_604800_is_refused(ttl):
    refused(body("reserve", ttl_seconds=ttl), "$.ttl_seconds")


def test_reserve_channel_is_ecommerce_or_staff():
    assert decode_inbound(body("reserve", channel="staff")).channel == "staff"
    refused(body("reserve", channel="pos"), "$.channel")


@pytest.mark.parametrize("type_", ["collect", "cancel"])
def test_collect_and_cancel_carry_no_lines(type_):
    refused(body(type_, lines=[{"sku": "SKU-1", "qty": 1}]), "$.lines")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"sale"', b"{"])
def test_not_a_json_object_is_refused(raw):
    with pytest.raises(msgspec.DecodeError):
        decode_inbound(raw)
