"""Reservations over HTTP: rule 5 in a race, repeats, refusals and rule 6, checked on the ledger's numbers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.clock import ManualClock
from stocksync.http.app import create_app
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_http import Api, admin, as_key, client, ecommerce, engine, scalar, unique  # noqa: F401


def reserve_body(location_id: str, *lines: tuple[str, int], **extra: object) -> dict[str, object]:
    return {
        "location_id": location_id,
        "channel": "ecommerce",
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
        **extra,
    }


async def test_a_hundred_racing_for_ten_units_exactly_ten_win(admin: Api, ecommerce: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 10)

    answers = await asyncio.gather(
        *(ecommerce.post("/v1/reservations", json=reserve_body(store, (sku, 1))) for _ in range(100))
    )

    won = [a for a in answers if a.status_code == 201]
    lost = [a for a in answers if a.status_code == 409]
    assert (len(won), len(lost)) == (10, 90)
    assert all(a.json()["status"] == "held" for a in won)
    assert all(a.json()["error"] == "insufficient_stock" for a in lost)
    assert all(a.json()["shortages"] == [{"sku": sku, "requested": 1, "available": 0}] for a in lost)
    position = await admin.position(store, sku)
    assert (position["on_hand"], position["reserved"], position["available"]) == (10, 10, 0)
    listed = await admin.get("/v1/reservations", params={"location_id": store, "status": "held"})
    held = listed.json()["items"]
    assert sorted(r["reservation_id"] for r in held) == sorted(a.json()["reservation_id"] for a in won)


async def test_a_reservation_holds_every_line_or_none(admin: Api, ecommerce: Api) -> None:
    store, a, b = await admin.store(), unique("sku"), unique("sku")
    await admin.receive(store, a, 5)
    await admin.receive(store, b, 1)

    refused = await ecommerce.post("/v1/reservations", json=reserve_body(store, (a, 2), (b, 2)))

    assert refused.status_code == 409
    assert refused.json()["shortages"] == [{"sku": b, "requested": 2, "available": 1}]
    assert (await admin.position(store, a))["reserved"] == 0
    held = await ecommerce.post(
        "/v1/reservations", json=reserve_body(store, (a, 2), (b, 1), reference="order-9")
    )
    assert held.status_code == 201
    body = held.json()
    assert body["lines"] == [{"sku": a, "qty": 2}, {"sku": b, "qty": 1}]
    assert body["reference"] == "order-9" and body["channel"] == "ecommerce"
    assert body["reservation_id"].startswith("res-")
    assert [(await admin.position(store, sku))["reserved"] for sku in (a, b)] == [2, 1]


async def test_posting_the_same_reservation_again_answers_it_and_holds_once(
    admin: Api, ecommerce: Api, engine: AsyncEngine
) -> None:
    store, sku, reservation_id = await admin.store(), unique("sku"), unique("res")
    await admin.receive(store, sku, 5)
    body = reserve_body(store, (sku, 2), reservation_id=reservation_id, ttl_seconds=600)

    first = await ecommerce.post("/v1/reservations", json=body)
    again = await ecommerce.post("/v1/reservations", json=body)
    other = await ecommerce.post("/v1/reservations", json={**body, "lines": [{"sku": sku, "qty": 3}]})

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert other.status_code == 409 and other.json()["error"] == "event_id_conflict"
    assert (await admin.position(store, sku))["reserved"] == 2
    moved = await scalar(engine, "SELECT count(*) FROM movements WHERE reservation_id = :r", r=reservation_id)
    assert moved == 1


async def test_a_refused_reservation_posted_again_is_refused_again(admin: Api, ecommerce: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    body = reserve_body(store, (sku, 1), reservation_id=unique("res"))

    first = await ecommerce.post("/v1/reservations", json=body)
    await admin.receive(store, sku, 5)
    again = await ecommerce.post("/v1/reservations", json=body)

    assert first.status_code == again.status_code == 409
    assert again.json()["error"] == "insufficient_stock"
    assert (await admin.position(store, sku))["reserved"] == 0


async def test_reserving_at_an_unknown_location_is_404(ecommerce: Api) -> None:
    answer = await ecommerce.post("/v1/reservations", json=reserve_body(unique("ghost"), ("SKU-1", 1)))
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown_location"


async def test_collect_sells_and_repeats_answer_the_same(admin: Api, ecommerce: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 5)
    reservation_id = (await ecommerce.post("/v1/reservations", json=reserve_body(store, (sku, 2)))).json()[
        "reservation_id"
    ]

    first = await ecommerce.post(f"/v1/reservations/{reservation_id}/collect")
    again = await ecommerce.post(f"/v1/reservations/{reservation_id}/collect")
    cancel = await ecommerce.post(f"/v1/reservations/{reservation_id}/cancel")

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == again.json()["status"] == "collected"
    assert cancel.status_code == 409
    assert (cancel.json()["error"], cancel.json()["status"]) == ("reservation_not_held", "collected")
    position = await admin.position(store, sku)
    assert (position["on_hand"], position["reserved"], position["version"]) == (3, 0, 3)
    read = await ecommerce.get(f"/v1/reservations/{reservation_id}")
    assert read.status_code == 200 and read.json()["status"] == "collected"


async def test_cancel_releases_the_hold(admin: Api, ecommerce: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 5)
    reservation_id = (await ecommerce.post("/v1/reservations", json=reserve_body(store, (sku, 4)))).json()[
        "reservation_id"
    ]

    cancelled = await ecommerce.post(f"/v1/reservations/{reservation_id}/cancel")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    position = await admin.position(store, sku)
    assert (position["on_hand"], position["reserved"], position["available"]) == (5, 0, 5)
    listed = await admin.get("/v1/reservations", params={"location_id": store, "status": "cancelled"})
    assert [r["reservation_id"] for r in listed.json()["items"]] == [reservation_id]


async def test_unknown_reservations_are_404(ecommerce: Api) -> None:
    missing = unique("res")
    for answer in (
        await ecommerce.get(f"/v1/reservations/{missing}"),
        await ecommerce.post(f"/v1/reservations/{missing}/collect"),
        await ecommerce.post(f"/v1/reservations/{missing}/cancel"),
    ):
        assert answer.status_code == 404
        assert answer.json()["error"] == "unknown_reservation"


async def test_a_staff_key_of_one_store_claims_no_reservation_id_at_another(
    admin: Api, ecommerce: Api, as_key
) -> None:
    """A reservation is its location and id: the same id at two stores is two reservations."""
    store_a, store_b, sku, rid = await admin.store(), await admin.store(), unique("sku"), unique("res")
    for store in (store_a, store_b):
        await admin.receive(store, sku, 5)
    staff = await as_key("staff", [store_a])
    claimed = await staff.post(
        "/v1/reservations", json={**reserve_body(store_a, (sku, 1), reservation_id=rid), "channel": "staff"}
    )

    held = await ecommerce.post("/v1/reservations", json=reserve_body(store_b, (sku, 2), reservation_id=rid))
    ambiguous = await ecommerce.get(f"/v1/reservations/{rid}")
    refused = await ecommerce.post(f"/v1/reservations/{rid}/collect")
    collected = await ecommerce.post(f"/v1/reservations/{rid}/collect", params={"location_id": store_b})
    not_its_store = await staff.post(f"/v1/reservations/{rid}/cancel", params={"location_id": store_b})
    nowhere = await ecommerce.get(f"/v1/reservations/{rid}", params={"location_id": unique("store")})

    assert (claimed.status_code, held.status_code, collected.status_code) == (201, 201, 200)
    assert (held.json()["location_id"], held.json()["status"]) == (store_b, "held")
    assert collected.json()["location_id"] == store_b and collected.json()["status"] == "collected"
    for answer in (ambiguous, refused):
        assert answer.status_code == 400
        assert (answer.json()["error"], answer.json()["field"]) == ("invalid_request", "location_id")
    assert not_its_store.status_code == 403
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "unknown_reservation"
    read_a = await ecommerce.get(f"/v1/reservations/{rid}", params={"location_id": store_a})
    read_b = await ecommerce.get(f"/v1/reservations/{rid}", params={"location_id": store_b})
    assert (read_a.json()["status"], read_b.json()["status"]) == ("held", "collected")
    assert [(await admin.position(s, sku))["reserved"] for s in (store_a, store_b)] == [1, 0]
    assert (await admin.position(store_b, sku))["on_hand"] == 3
    cancelled = await staff.post(f"/v1/reservations/{rid}/cancel", params={"location_id": store_a})
    assert (cancelled.status_code, cancelled.json()["location_id"]) == (200, store_a)
    assert cancelled.json()["status"] == "cancelled"


# -- rule 7 at the door: no sweeper runs in these tests ----------------------------------------------------


@pytest.fixture
async def clock_and_api(engine: AsyncEngine) -> AsyncIterator[tuple[ManualClock, Api]]:
    """The API on a clock that moves only when told, with no sweeper running."""
    clock = ManualClock()
    app = create_app(engine=engine, ledger=GroupCommitLedger(engine, clock=clock), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stocksync.test") as http:
        yield clock, Api(http, await create_key(engine, "admin", label="expiry tests"))


@pytest.mark.parametrize("settle", ["collect", "cancel"])
async def test_a_hold_past_its_expiry_is_expired_when_collected_or_cancelled(
    clock_and_api: tuple[ManualClock, Api], settle: str
) -> None:
    clock, api = clock_and_api
    store, sku = await api.store(), unique("sku")
    await api.receive(store, sku, 5)
    made = await api.post("/v1/reservations", json=reserve_body(store, (sku, 2), ttl_seconds=60))
    reservation_id = made.json()["reservation_id"]
    clock.advance(seconds=60)  # expires_at is now; the sweeper has not run

    answer = await api.post(f"/v1/reservations/{reservation_id}/{settle}")

    assert answer.status_code == 409
    assert (answer.json()["error"], answer.json()["status"]) == ("reservation_not_held", "expired")
    assert (await api.get(f"/v1/reservations/{reservation_id}")).json()["status"] == "expired"
    position = await api.position(store, sku)
    assert (position["on_hand"], position["reserved"], position["available"]) == (5, 0, 5)
    assert [(m["type"], m["event_id"], m["reserved_delta"]) for m in await api.movements(store, sku)][-1] == (
        "expire",
        f"expire:{reservation_id}",
        -2,
    )
