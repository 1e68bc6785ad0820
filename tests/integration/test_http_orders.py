"""Channels and online orders over HTTP (spec section 7), checked on the ledger's numbers."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support_http import Api, admin, as_key, client, ecommerce, engine, scalar, unique  # noqa: F401


async def channel(admin: Api, locations: list[str], buffer: int = 0) -> str:
    channel_id = unique("web")
    answer = await admin.put(
        f"/v1/channels/{channel_id}", json={"name": "Web shop", "locations": locations, "buffer": buffer}
    )
    assert answer.status_code == 200, answer.text
    return channel_id


def order_body(channel_id: str, *lines: tuple[str, int], **extra: object) -> dict[str, object]:
    return {
        "order_id": extra.pop("order_id", None) or unique("order"),
        "channel_id": channel_id,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
        **extra,
    }


async def test_a_channel_is_defined_listed_and_sums_its_locations_less_the_buffer(admin: Api, ecommerce: Api):
    wh, ams, other = (
        await admin.store(kind="warehouse", pickup=False),
        await admin.store(),
        await admin.store(),
    )
    sku = unique("sku")
    for location, qty in ((wh, 7), (ams, 4), (other, 100)):
        await admin.receive(location, sku, qty)
    web = await channel(admin, [wh, ams], buffer=2)

    listed = (await ecommerce.get("/v1/channels")).json()["items"]
    assert {"channel_id": web, "name": "Web shop", "locations": [wh, ams], "buffer": 2} in listed
    answer = await ecommerce.get(f"/v1/channels/{web}/availability", params={"sku": [sku, "never-seen"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == [
        {
            "channel_id": web,
            "sku": sku,
            "available": 9,
            "locations": [{"location_id": wh, "available": 7}, {"location_id": ams, "available": 4}],
        },
        {
            "channel_id": web,
            "sku": "never-seen",
            "available": 0,
            "locations": [{"location_id": wh, "available": 0}, {"location_id": ams, "available": 0}],
        },
    ]


async def test_channel_refusals_are_clear(admin: Api, ecommerce: Api):
    store = await admin.store()
    assert (
        await ecommerce.put("/v1/channels/web-x", json={"name": "x", "locations": [store]})
    ).status_code == 403
    unknown = await admin.put("/v1/channels/web-x", json={"name": "x", "locations": [store, "nowhere"]})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_location")
    twice = await admin.put("/v1/channels/web-x", json={"name": "x", "locations": [store, store]})
    assert twice.status_code == 400 and twice.json()["field"] == "locations"
    missing = await ecommerce.get("/v1/channels/nope/availability", params={"sku": "a"})
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_channel")
    no_order = await ecommerce.post("/v1/orders", json=order_body("nope", ("a", 1)))
    assert (no_order.status_code, no_order.json()["error"]) == (404, "unknown_channel")


async def test_an_order_is_allocated_whole_at_one_location_and_ships_as_sales(admin: Api, ecommerce: Api):
    wh, ams = await admin.store(kind="warehouse", pickup=False), await admin.store()
    a, b = unique("sku"), unique("sku")
    await admin.receive(wh, a, 1)
    await admin.receive(ams, a, 3)
    await admin.receive(ams, b, 1)
    web = await channel(admin, [wh, ams])

    placed = await ecommerce.post("/v1/orders", json=order_body(web, (a, 2), (b, 1), reference="web-1"))

    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "allocated" and order["reference"] == "web-1"
    assert order["allocations"] == [
        {
            "location_id": ams,
            "reservation_id": order["order_id"],
            "lines": [{"sku": a, "qty": 2}, {"sku": b, "qty": 1}],
        }
    ]
    assert [(await admin.position(ams, s))["reserved"] for s in (a, b)] == [2, 1]
    shipped = await ecommerce.post(f"/v1/orders/{order['order_id']}/ship")
    assert (shipped.status_code, shipped.json()["status"]) == (200, "shipped")
    assert (await ecommerce.post(f"/v1/orders/{order['order_id']}/ship")).json()["status"] == "shipped"
    position = await admin.position(ams, a)
    assert (position["on_hand"], position["reserved"]) == (1, 0)
    refused = await ecommerce.post(f"/v1/orders/{order['order_id']}/cancel")
    assert (refused.status_code, refused.json()["error"], refused.json()["status"]) == (
        409,
        "order_not_allocated",
        "shipped",
    )


async def test_an_order_no_location_holds_is_split_over_the_fewest(admin: Api, ecommerce: Api):
    one, two, three = await admin.store(), await admin.store(), await admin.store()
    sku = unique("sku")
    for location, qty in ((one, 1), (two, 2), (three, 3)):
        await admin.receive(location, sku, qty)
    web = await channel(admin, [one, two, three])

    order = (await ecommerce.post("/v1/orders", json=order_body(web, (sku, 5)))).json()

    assert [(x["location_id"], x["lines"][0]["qty"]) for x in order["allocations"]] == [(two, 2), (three, 3)]
    cancelled = await ecommerce.post(f"/v1/orders/{order['order_id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert [(await admin.position(x, sku))["reserved"] for x in (one, two, three)] == [0, 0, 0]


async def test_the_nearest_location_to_ship_to_is_chosen(admin: Api, ecommerce: Api):
    far, near = await admin.store(lat=53.2, lon=6.56), await admin.store(lat=51.92, lon=4.48)
    sku = unique("sku")
    await admin.receive(far, sku, 5)
    await admin.receive(near, sku, 5)
    web = await channel(admin, [far, near])
    order = await ecommerce.post(
        "/v1/orders", json=order_body(web, (sku, 1), ship_to={"lat": 51.9, "lon": 4.5})
    )
    assert [x["location_id"] for x in order.json()["allocations"]] == [near]


async def test_a_short_order_is_refused_whole_with_channel_shortages_and_answers_the_same_again(
    admin: Api, ecommerce: Api
):
    one, two = await admin.store(), await admin.store()
    a, b = unique("sku"), unique("sku")
    await admin.receive(one, a, 2)
    await admin.receive(two, a, 2)
    await admin.receive(two, b, 5)
    web = await channel(admin, [one, two], buffer=1)
    body = order_body(web, (a, 4), (b, 1))

    refused = await ecommerce.post("/v1/orders", json=body)

    assert refused.status_code == 409
    assert refused.json()["error"] == "insufficient_stock"
    assert refused.json()["shortages"] == [{"sku": a, "requested": 4, "available": 3}]
    assert [(await admin.position(x, a))["reserved"] for x in (one, two)] == [0, 0]
    await admin.receive(one, a, 10)
    again = await ecommerce.post("/v1/orders", json=body)  # the first outcome, not a new try
    assert (again.status_code, again.json()["shortages"]) == (409, refused.json()["shortages"])
    read = await ecommerce.get(f"/v1/orders/{body['order_id']}")
    assert read.json()["status"] == "rejected"


async def test_the_same_order_id_answers_the_first_order_and_other_lines_conflict(admin: Api, ecommerce: Api):
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 5)
    web = await channel(admin, [store])
    body = order_body(web, (sku, 2))
    first = await ecommerce.post("/v1/orders", json=body)
    again = await ecommerce.post("/v1/orders", json=body)
    other = await ecommerce.post("/v1/orders", json={**body, "lines": [{"sku": sku, "qty": 3}]})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert (other.status_code, other.json()["error"]) == (409, "order_id_conflict")
    assert (await admin.position(store, sku))["reserved"] == 2


async def test_tills_and_staff_may_not_order(admin: Api, as_key):
    store = await admin.store()
    web = await channel(admin, [store])
    pos = await as_key("pos", [store])
    answer = await pos.post("/v1/orders", json=order_body(web, ("a", 1)))
    assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")


async def test_a_hundred_orders_racing_tills_for_ten_units_over_four_locations(
    admin: Api, ecommerce: Api, as_key, engine: AsyncEngine
):
    stores = [await admin.store() for _ in range(4)]
    sku = unique("sku")
    for store, qty in zip(stores, (1, 2, 3, 4), strict=True):
        await admin.receive(store, sku, qty)
    web = await channel(admin, stores)
    tills = [await as_key("pos", [store]) for store in stores]
    sales = [
        till.event("sale", store, [{"sku": sku, "qty": 1}]) for till, store in zip(tills, stores, strict=True)
    ]
    orders = [ecommerce.post("/v1/orders", json=order_body(web, (sku, 1 + i % 2))) for i in range(100)]

    answers = await asyncio.gather(*orders, *sales)

    placed = [a.json() for a in answers[:100] if a.status_code == 201]
    assert all(a.status_code in (201, 409) for a in answers[:100])
    assert all(a.json()["outcome"] == "applied" for a in answers[100:])
    allocated = sum(line["qty"] for o in placed for x in o["allocations"] for line in x["lines"])
    ordered = sum(line["qty"] for o in placed for line in o["lines"])
    assert allocated == ordered  # never half allocated
    positions = [await admin.position(store, sku) for store in stores]
    assert sum(p["reserved"] for p in positions) == allocated
    # What existed: each order took only what was available when it committed (sales are facts and may
    # leave holds short later): replayed in commit order, no reserve ever left a location below zero.
    for store in stores:
        on_hand = reserved = 0
        for m in await admin.movements(store, sku):
            on_hand, reserved = on_hand + m["on_hand_delta"], reserved + m["reserved_delta"]
            if m["type"] == "reserve":
                assert on_hand - reserved >= 0, (store, m)
    # Every unit that existed was taken by an order or a till: at most one left (asked for twice by each
    # order still waiting), and the channel's number agrees with the stores'.
    assert sum(max(0, p["on_hand"] - p["reserved"]) for p in positions) <= 1
    seen = (await admin.get(f"/v1/channels/{web}/availability", params={"sku": sku})).json()["items"][0]
    assert seen["available"] == sum(p["available"] for p in positions)
    held = await scalar(
        engine,
        "SELECT coalesce(sum(l.qty), 0) FROM reservation_lines l JOIN reservations r USING (reservation_id, location_id)"
        " WHERE r.status = 'held' AND l.sku = :sku",
        sku=sku,
    )
    assert held == allocated
    # An order holds a connection for its transaction (none share a group commit): let the session's pool
    # give back what the race opened, or later tests of the session find PostgreSQL's connections taken.
    await engine.dispose()


async def test_a_web_order_returned_at_a_store_restocks_there_and_the_channel_follows(
    admin: Api, ecommerce: Api
):
    wh, ams = await admin.store(kind="warehouse", pickup=False), await admin.store()
    a, b = unique("sku"), unique("sku")
    await admin.receive(wh, a, 3)
    await admin.receive(wh, b, 1)
    web = await channel(admin, [wh, ams])
    order = (await ecommerce.post("/v1/orders", json=order_body(web, (a, 2), (b, 1)))).json()
    unshipped = await admin.event("return", ams, [{"sku": a, "qty": 1}], order_id=order["order_id"])
    assert (unshipped.json()["outcome"], unshipped.json()["error"]) == ("rejected", "return_not_in_order")
    await ecommerce.post(f"/v1/orders/{order['order_id']}/ship")

    returned = await admin.event("return", ams, [{"sku": a, "qty": 1}], order_id=order["order_id"])
    damaged = await admin.event(
        "return", ams, [{"sku": a, "qty": 1, "disposition": "damaged"}], order_id=order["order_id"]
    )
    too_many = await admin.event("return", ams, [{"sku": a, "qty": 1}], order_id=order["order_id"])
    not_ordered = await admin.event(
        "return", ams, [{"sku": unique("sku"), "qty": 1}], order_id=order["order_id"]
    )
    unknown = await admin.event("return", ams, [{"sku": a, "qty": 1}], order_id=unique("order"))

    assert [x.json()["outcome"] for x in (returned, damaged)] == ["applied", "applied"]
    assert [(x.json()["outcome"], x.json()["error"]) for x in (too_many, not_ordered, unknown)] == [
        ("rejected", "return_not_in_order"),
        ("rejected", "return_not_in_order"),
        ("rejected", "unknown_order"),
    ]
    at_ams = await admin.position(ams, a)
    assert (at_ams["on_hand"], at_ams["damaged"], at_ams["available"]) == (1, 1, 1)
    seen = (await ecommerce.get(f"/v1/channels/{web}/availability", params={"sku": a})).json()["items"][0]
    assert seen["available"] == 2 and seen["locations"] == [
        {"location_id": wh, "available": 1},
        {"location_id": ams, "available": 1},
    ]


async def test_an_order_not_shipped_in_time_expires_by_rule_7_and_cannot_ship(
    admin: Api, ecommerce: Api, engine: AsyncEngine
):
    one, two = await admin.store(), await admin.store()
    sku = unique("sku")
    await admin.receive(one, sku, 1)
    await admin.receive(two, sku, 1)
    web = await channel(admin, [one, two])
    order = (await ecommerce.post("/v1/orders", json=order_body(web, (sku, 2), ttl_seconds=60))).json()
    assert len(order["allocations"]) == 2
    async with engine.begin() as conn:  # the hold's time runs out
        await conn.execute(
            text(
                "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE reservation_id = :id"
            ),
            {"id": order["order_id"]},
        )

    read = await ecommerce.get(f"/v1/orders/{order['order_id']}")
    shipped = await ecommerce.post(f"/v1/orders/{order['order_id']}/ship")

    assert read.json()["status"] == "expired"
    assert (shipped.status_code, shipped.json()["error"], shipped.json()["status"]) == (
        409,
        "order_not_allocated",
        "expired",
    )
    assert [(await admin.position(x, sku))["on_hand"] for x in (one, two)] == [1, 1]  # nothing sold
