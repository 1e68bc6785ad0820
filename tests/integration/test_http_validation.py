"""Malformed requests: 400 naming the field, never a 500, and nothing recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.domain.events import INBOUND_TYPES
from tests.support_http import Api, admin, client, engine, now_iso, scalar, unique  # noqa: F401


def sale(location_id: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "event_id": unique("bad"),
        "type": "sale",
        "location_id": location_id,
        "occurred_at": now_iso(),
        "lines": [{"sku": "SKU-1", "qty": 1}],
        **(changes or {}),
    }


EVENT_FLAWS: list[tuple[str, dict[str, Any], str]] = [
    ("qty of the wrong type", {"lines": [{"sku": "SKU-1", "qty": "two"}]}, "lines[0].qty"),
    ("qty zero", {"lines": [{"sku": "SKU-1", "qty": 0}]}, "lines[0].qty"),
    ("qty a float", {"lines": [{"sku": "SKU-1", "qty": 1.5}]}, "lines[0].qty"),
    ("a line without qty", {"lines": [{"sku": "SKU-1"}]}, "lines[0].qty"),
    ("a bad sku", {"lines": [{"sku": "SKU 1!", "qty": 1}]}, "lines[0].sku"),
    ("no lines", {"lines": []}, "lines"),
    ("10,000 lines", {"lines": [{"sku": "A", "qty": 1}] * 10_000}, "lines"),
    ("a bad location id", {"location_id": "no such/place"}, "location_id"),
    ("an unknown type", {"type": "steal"}, "type"),
    ("a time without zone", {"occurred_at": "2026-11-23T10:00:00"}, "occurred_at"),
    ("an event id too long", {"event_id": "e" * 129}, "event_id"),
]


@pytest.mark.parametrize(("flaw", "changes", "field"), EVENT_FLAWS, ids=[f[0] for f in EVENT_FLAWS])
async def test_an_invalid_event_is_400_naming_the_field_and_not_recorded(
    admin: Api, engine: AsyncEngine, flaw: str, changes: dict[str, Any], field: str
) -> None:
    store = await admin.store()
    body = sale(store, changes)

    answer = await admin.post("/v1/events", json=body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert answer.json()["field"] == field
    assert answer.json()["detail"]
    recorded = "SELECT count(*) FROM processed_events WHERE event_id = :e"
    assert await scalar(engine, recorded, e=body["event_id"]) == 0
    assert await scalar(engine, "SELECT count(*) FROM movements WHERE location_id = :l", l=store) == 0


async def test_missing_fields_are_named(admin: Api) -> None:
    store = await admin.store()
    body = sale(store)
    del body["event_id"]
    adjust = sale(store, {"type": "adjust", "lines": [{"sku": "A", "delta": 0, "reason": "found"}]})

    assert (await admin.post("/v1/events", json=body)).json()["field"] == "event_id"
    assert (await admin.post("/v1/events", json=adjust)).json()["field"] == "lines[0].delta"


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"event_id": ', b"\xff\xfe", b"[1, 2]", b"42", b"null"])
async def test_a_body_that_is_not_a_json_object_is_400_naming_the_body(admin: Api, raw: bytes) -> None:
    for path in ("/v1/events", "/v1/reservations"):
        answer = await admin.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (path, raw)
        assert answer.json()["field"] == "body"


RESERVE_FLAWS: list[tuple[dict[str, Any], str]] = [
    ({"channel": "phone"}, "channel"),
    ({"ttl_seconds": 10}, "ttl_seconds"),
    ({"reservation_id": "has space"}, "reservation_id"),
    ({"reference": "r" * 257}, "reference"),
    ({"lines": [{"sku": "A", "qty": 0}]}, "lines[0].qty"),
    ({"lines": [{"sku": "A", "qty": 1}] * 501}, "lines"),
    ({"location_id": 7}, "location_id"),
]


@pytest.mark.parametrize(("changes", "field"), RESERVE_FLAWS)
async def test_an_invalid_reservation_is_400_naming_the_field(
    admin: Api, engine: AsyncEngine, changes: dict[str, Any], field: str
) -> None:
    store = await admin.store()
    body = {"location_id": store, "channel": "ecommerce", "lines": [{"sku": "A", "qty": 1}], **changes}

    answer = await admin.post("/v1/reservations", json=body)

    assert (answer.status_code, answer.json()["field"]) == (400, field)
    assert await scalar(engine, "SELECT count(*) FROM reservations WHERE location_id = :l", l=store) == 0


LOCATION_FLAWS: list[tuple[str, dict[str, Any], str]] = [
    ("lat off the globe", {"kind": "store", "name": "x", "lat": 91, "lon": 0}, "lat"),
    ("lon off the globe", {"kind": "store", "name": "x", "lat": 0, "lon": -181}, "lon"),
    ("lat without lon", {"kind": "store", "name": "x", "lat": 10}, "lon"),
    ("lon without lat", {"kind": "store", "name": "x", "lon": 10}, "lat"),
    ("an unknown kind", {"kind": "shop", "name": "x"}, "kind"),
    ("no name", {"kind": "store"}, "name"),
    ("an empty name", {"kind": "store", "name": ""}, "name"),
]


@pytest.mark.parametrize(("flaw", "body", "field"), LOCATION_FLAWS, ids=[f[0] for f in LOCATION_FLAWS])
async def test_an_invalid_location_is_400_naming_the_field(
    admin: Api, flaw: str, body: dict[str, Any], field: str
) -> None:
    location_id = unique("store")
    answer = await admin.put(f"/v1/locations/{location_id}", json=body)
    assert (answer.status_code, answer.json()["field"]) == (400, field)
    assert location_id not in str((await admin.get("/v1/locations")).json())


async def test_invalid_path_ids_and_safety_stock(admin: Api) -> None:
    store = await admin.store()
    bad_id = await admin.put("/v1/locations/-starts-with-dash", json={"kind": "store", "name": "x"})
    negative = await admin.put(f"/v1/locations/{store}/safety-stock/SKU-1", json={"qty": -1})
    bad_sku = await admin.put(f"/v1/locations/{store}/safety-stock/{'s' * 65}", json={"qty": 1})
    bad_reservation = await admin.post("/v1/reservations/with space/cancel")

    assert (bad_id.status_code, bad_id.json()["field"]) == (400, "location_id")
    assert (negative.status_code, negative.json()["field"]) == (400, "qty")
    assert (bad_sku.status_code, bad_sku.json()["field"]) == (400, "sku")
    assert (bad_reservation.status_code, bad_reservation.json()["field"]) == (400, "reservation_id")
    assert (await admin.position(store, "SKU-1"))["version"] == 0


QUERY_FLAWS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/availability", {}, "sku"),
    ("/v1/availability", {"sku": [f"S{i}" for i in range(501)]}, "sku"),
    ("/v1/availability", {"sku": "bad sku"}, "sku"),
    ("/v1/availability", {"sku": "A", "location_id": "bad/id"}, "location_id"),
    ("/v1/availability", {"sku": "A", "location_id": [f"L{i}" for i in range(101)]}, "location_id"),
    (  # 100 locations x 101 skus: over 10,000 positions
        "/v1/availability",
        {"sku": [f"S{i}" for i in range(101)], "location_id": [f"L{i}" for i in range(100)]},
        "location_id",
    ),
    ("/v1/pickup", {"sku": "A", "qty": [1] * 501}, "qty"),
    ("/v1/pickup", {"sku": "A", "qty": [1, 2]}, "qty"),
    ("/v1/pickup", {"sku": "A", "qty": 0}, "qty"),
    ("/v1/pickup", {"sku": "A", "near": "north"}, "near"),
    ("/v1/pickup", {"sku": "A", "near": "91,0"}, "near"),
    ("/v1/pickup", {"sku": "A", "limit": 101}, "limit"),
    ("/v1/movements", {"limit": 1001}, "limit"),
    ("/v1/movements", {"after": "x"}, "after"),
    ("/v1/movements", {"location_id": "bad id"}, "location_id"),
    ("/v1/reservations", {"location_id": "bad id"}, "location_id"),
    ("/v1/reservations", {"status": "lost"}, "status"),
    ("/v1/reservations", {"limit": 1001}, "limit"),
]


@pytest.mark.parametrize(("path", "params", "field"), QUERY_FLAWS)
async def test_invalid_query_parameters_are_400_naming_them(
    admin: Api, path: str, params: dict[str, Any], field: str
) -> None:
    answer = await admin.get(path, params=params)
    assert answer.status_code == 400
    assert (answer.json()["error"], answer.json()["field"]) == ("invalid_request", field)


async def test_a_body_over_256_kib_is_413(admin: Api) -> None:
    answer = await admin.post("/v1/events", content=b" " * (256 * 1024 + 1))
    assert (answer.status_code, answer.json()["error"]) == (413, "body_too_large")


# -- fuzz: whatever arrives, the answer is never a 500 ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
LINE_KEYS = ["sku", "qty", "counted", "delta", "reason", "disposition"]
OPTIONAL_KEYS = ["location_id", "reservation_id", "channel", "ttl_seconds", "reference", "source", *LINE_KEYS]
# Near-valid envelopes reach deeper than random JSON: a known type, then any value for any field.
envelopes = st.fixed_dictionaries(
    {
        "type": st.sampled_from(list(INBOUND_TYPES)),
        "event_id": st.text(min_size=1, max_size=20),
        "occurred_at": st.just("2026-11-23T10:00:00Z"),
    },
    optional={key: json_values for key in OPTIONAL_KEYS}
    | {"lines": st.lists(st.dictionaries(st.sampled_from(LINE_KEYS), json_values, max_size=4), max_size=3)},
)
bodies = json_values | envelopes | st.binary(max_size=64)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=bodies, path=st.sampled_from(["/v1/events", "/v1/reservations"]))
async def test_random_bodies_never_answer_500(admin: Api, body: Any, path: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = await admin.post(path, content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code < 500, answer.text
    assert answer.status_code == 200 or answer.json()["error"]


QUERY_NAMES = ["sku", "qty", "near", "limit", "after", "location_id", "status"]


@FUZZ
@given(
    path=st.sampled_from(["/v1/availability", "/v1/pickup", "/v1/movements", "/v1/reservations"]),
    params=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), st.text(max_size=12)), max_size=6),
)
async def test_random_query_parameters_never_answer_500(
    admin: Api, path: str, params: list[tuple[str, str]]
) -> None:
    answer = await admin.get(path, params=params)
    assert answer.status_code in (200, 400, 404), answer.text
    assert (
        answer.status_code == 200
        or answer.json().get("field")
        or answer.json()["error"] == "unknown_location"
    )
