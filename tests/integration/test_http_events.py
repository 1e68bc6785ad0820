"""POST and GET /v1/events: exactly once (rule 10), refusals recorded (rule 11), counts (rule 9)."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support_http import (  # noqa: F401  (fixtures)
    Api,
    admin,
    as_key,
    client,
    ecommerce,
    engine,
    now_iso,
    scalar,
    unique,
)


def sale(location_id: str, sku: str, qty: int, *, event_id: str | None = None, at: str | None = None) -> dict:
    return {
        "event_id": event_id or unique("till"),
        "type": "sale",
        "location_id": location_id,
        "occurred_at": at or now_iso(),
        "source": "pos:test",
        "lines": [{"sku": sku, "qty": qty}],
    }


async def test_the_same_event_five_times_moves_stock_once(admin: Api, engine: AsyncEngine) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 10)
    body = sale(store, sku, 3)

    answers = [await admin.post("/v1/events", json=body) for _ in range(5)]

    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json()["outcome"] for a in answers] == ["applied"] + ["duplicate"] * 4
    assert (await admin.position(store, sku))["on_hand"] == 7
    assert await scalar(engine, "SELECT count(*) FROM movements WHERE event_id = :e", e=body["event_id"]) == 1
    assert len(await admin.movements(store, sku)) == 2  # the receipt and the sale


async def test_the_same_event_id_with_another_body_is_a_conflict_that_moves_nothing(admin: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 10)
    body = sale(store, sku, 3)
    await admin.post("/v1/events", json=body)

    conflict = await admin.post("/v1/events", json={**body, "lines": [{"sku": sku, "qty": 4}]})

    assert conflict.status_code == 200
    assert conflict.json() == {
        "event_id": body["event_id"],
        "outcome": "rejected",
        "error": "event_id_conflict",
    }
    assert (await admin.position(store, sku))["on_hand"] == 7
    recorded = await admin.get(f"/v1/events/{body['event_id']}")
    assert recorded.json()["outcome"] == "applied"  # the first outcome stands


async def test_a_key_of_one_store_cannot_claim_the_event_ids_of_another(admin: Api, as_key) -> None:
    """Rule 10: an event is its location and id; store A's till posting B's future id first blocks nothing."""
    store_a, store_b, sku = await admin.store(), await admin.store(), unique("sku")
    await admin.receive(store_a, sku, 10)
    await admin.receive(store_b, sku, 10)
    till_a, till_b = await as_key("pos", [store_a]), await as_key("pos", [store_b])
    event_id = f"{store_b}:till-1:000001"  # what B's till will use next

    claimed = await till_a.post("/v1/events", json=sale(store_a, sku, 1, event_id=event_id))
    real = await till_b.post("/v1/events", json=(body := sale(store_b, sku, 3, event_id=event_id)))
    again = await till_b.post("/v1/events", json=body)
    changed = await till_b.post("/v1/events", json={**body, "lines": [{"sku": sku, "qty": 4}]})

    assert claimed.json()["outcome"] == "applied"
    assert real.json() == {"event_id": event_id, "outcome": "applied"}
    assert again.json()["outcome"] == "duplicate"
    assert (changed.json()["outcome"], changed.json()["error"]) == ("rejected", "event_id_conflict")
    assert (await admin.position(store_a, sku))["on_hand"] == 9
    assert (await admin.position(store_b, sku))["on_hand"] == 7


async def test_an_event_id_used_at_several_locations_is_read_with_its_location(admin: Api) -> None:
    store_a, store_b, sku = await admin.store(), await admin.store(), unique("sku")
    event_id = unique("shared")
    await admin.post("/v1/events", json=sale(store_a, sku, 1, event_id=event_id))
    alone = await admin.get(f"/v1/events/{event_id}")
    await admin.post("/v1/events", json=sale(ghost := unique("ghost"), sku, 1, event_id=event_id))
    await admin.post("/v1/events", json=sale(store_b, sku, 2, event_id=event_id))

    ambiguous = await admin.get(f"/v1/events/{event_id}")
    at_b = await admin.get(f"/v1/events/{event_id}", params={"location_id": store_b})
    at_ghost = await admin.get(f"/v1/events/{event_id}", params={"location_id": ghost})
    nowhere = await admin.get(f"/v1/events/{event_id}", params={"location_id": unique("store")})

    assert (alone.status_code, alone.json()["outcome"]) == (200, "applied")
    assert (ambiguous.status_code, ambiguous.json()["error"], ambiguous.json()["field"]) == (
        400,
        "invalid_request",
        "location_id",
    )
    assert (at_b.status_code, at_b.json()["outcome"]) == (200, "applied")
    assert (at_ghost.json()["outcome"], at_ghost.json()["error"]) == ("rejected", "unknown_location")
    assert nowhere.status_code == 404


async def test_a_refused_event_is_answered_rejected_and_recorded(admin: Api) -> None:
    body = sale(unique("ghost"), "SKU-1", 1)

    answer = await admin.post("/v1/events", json=body)
    recorded = await admin.get(f"/v1/events/{body['event_id']}")

    assert answer.status_code == 200
    assert answer.json() == {"event_id": body["event_id"], "outcome": "rejected", "error": "unknown_location"}
    assert recorded.status_code == 200
    assert recorded.json() | {"recorded_at": None} == {
        "event_id": body["event_id"],
        "type": "sale",
        "outcome": "rejected",
        "error": "unknown_location",
        "recorded_at": None,
    }


async def test_a_sale_older_than_a_count_is_recorded_superseded(admin: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 10)
    count = {
        "event_id": unique("count"),
        "type": "count",
        "location_id": store,
        "occurred_at": now_iso(),
        "lines": [{"sku": sku, "counted": 8}],
    }
    assert (await admin.post("/v1/events", json=count)).json()["outcome"] == "applied"

    late = sale(store, sku, 2, at="2026-01-01T11:00:00Z")  # rung up before the count, delivered after it
    answer = await admin.post("/v1/events", json=late)

    assert answer.json()["outcome"] == "applied"
    (movement,) = [m for m in await admin.movements(store, sku) if m["event_id"] == late["event_id"]]
    assert (movement["on_hand_delta"], movement["superseded_by_count"]) == (0, True)
    position = await admin.position(store, sku)
    assert (position["on_hand"], position["version"]) == (8, 3)


async def test_reservation_events_answer_with_the_reservation(admin: Api) -> None:
    store, sku, reservation_id = await admin.store(), unique("sku"), unique("res")
    await admin.receive(store, sku, 3)
    reserve = {
        "event_id": unique("site"),
        "type": "reserve",
        "location_id": store,
        "occurred_at": now_iso(),
        "reservation_id": reservation_id,
        "channel": "ecommerce",
        "lines": [{"sku": sku, "qty": 2}],
    }

    held = await admin.post("/v1/events", json=reserve)
    collected = await admin.event("collect", store, reservation_id=reservation_id)

    assert held.json()["outcome"] == "applied"
    assert held.json()["reservation"]["status"] == "held"
    assert collected.json()["reservation"] | {"created_at": 0, "expires_at": 0} == {
        "reservation_id": reservation_id,
        "location_id": store,
        "channel": "ecommerce",
        "status": "collected",
        "lines": [{"sku": sku, "qty": 2}],
        "reference": None,
        "created_at": 0,
        "expires_at": 0,
        "shortages": [],
    }
    position = await admin.position(store, sku)
    assert (position["on_hand"], position["reserved"]) == (1, 0)


async def test_event_ids_with_slashes_colons_and_odd_characters_are_found(admin: Api) -> None:
    store = await admin.store()
    for event_id in (f"{store}/till:3/000123", f"{store} #?%&+ x", f"{store}//double/", f"/{store}"):
        posted = await admin.post("/v1/events", json=sale(store, "SKU-1", 1, event_id=event_id))
        assert posted.status_code == 200

        found = await admin.get("/v1/events/" + quote(event_id, safe="/:"))

        assert found.status_code == 200, event_id
        assert found.json()["event_id"] == event_id


async def test_unknown_and_invalid_event_ids(admin: Api) -> None:
    missing = await admin.get(f"/v1/events/{unique('never')}")
    too_long = await admin.get("/v1/events/" + "x" * 129)

    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (too_long.status_code, too_long.json()["field"]) == (400, "event_id")


async def test_ecommerce_collects_through_events_only_at_pickup_stores(admin: Api, ecommerce: Api) -> None:
    closed = await admin.store(pickup=False)
    answer = await ecommerce.event("receipt", closed, [{"sku": "SKU-1", "qty": 1}])
    assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")
