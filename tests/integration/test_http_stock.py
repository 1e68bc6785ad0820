"""Reading stock: availability, pickup stores, the audit trail, and safety stock as a change."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import create_engine
from stocksync.http.app import create_app
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_http import Api, admin, client, ecommerce, engine, unique  # noqa: F401
from tests.support_nats import wait_until

AMSTERDAM = (52.3676, 4.9041)
UTRECHT = (52.0907, 5.1214)
ROTTERDAM = (51.9244, 4.4777)


async def test_availability_reads_positions_and_zeros_for_skus_never_seen(admin: Api, ecommerce: Api) -> None:
    one, two, sku, never = await admin.store(), await admin.store(), unique("sku"), unique("sku")
    await admin.receive(one, sku, 4)
    await admin.receive(two, sku, 6)

    asked = await ecommerce.get("/v1/availability", params={"sku": [sku, never], "location_id": one})
    everywhere = await ecommerce.get("/v1/availability", params={"sku": [sku, never]})

    assert asked.status_code == 200
    assert asked.json()["items"] == [
        {
            "location_id": one,
            "sku": sku,
            "on_hand": 4,
            "reserved": 0,
            "damaged": 0,
            "safety_stock": 0,
            "available": 4,
            "version": 1,
        },
        {
            "location_id": one,
            "sku": never,
            "on_hand": 0,
            "reserved": 0,
            "damaged": 0,
            "safety_stock": 0,
            "available": 0,
            "version": 0,
        },
    ]
    assert sorted((p["location_id"], p["on_hand"]) for p in everywhere.json()["items"]) == sorted(
        [(one, 4), (two, 6)]
    )


async def test_availability_without_locations_answers_at_most_10000_positions(
    admin: Api, engine: AsyncEngine
) -> None:
    prefix = unique("wide")
    skus = [f"{prefix}-{n}" for n in range(500)]
    async with engine.begin() as conn:  # 500 skus held at 21 stores: 10,500 positions
        await conn.execute(
            text(
                "INSERT INTO locations (location_id, kind, name)"
                " SELECT :p || '-store-' || l, 'store', 'wide store' FROM generate_series(0, 20) AS l"
            ),
            {"p": prefix},
        )
        await conn.execute(
            text(
                "INSERT INTO positions (location_id, sku) SELECT :p || '-store-' || l, s"
                " FROM generate_series(0, 20) AS l, unnest(CAST(:skus AS text[])) AS s"
            ),
            {"p": prefix, "skus": skus},
        )

    too_wide = await admin.get("/v1/availability", params={"sku": skus})
    narrower = await admin.get("/v1/availability", params={"sku": skus[:400]})

    assert too_wide.status_code == 400
    assert (too_wide.json()["error"], too_wide.json()["field"]) == ("invalid_request", "location_id")
    assert narrower.status_code == 200 and len(narrower.json()["items"]) == 21 * 400


async def test_availability_at_an_unknown_location_is_404(ecommerce: Api) -> None:
    answer = await ecommerce.get("/v1/availability", params={"sku": "A", "location_id": unique("ghost")})
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_location")


async def test_safety_stock_is_a_change_that_lowers_available(admin: Api, ecommerce: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 10)

    answer = await admin.put(f"/v1/locations/{store}/safety-stock/{sku}", json={"qty": 3})

    assert answer.status_code == 200
    assert answer.json() == {
        "location_id": store,
        "sku": sku,
        "on_hand": 10,
        "reserved": 0,
        "damaged": 0,
        "safety_stock": 3,
        "available": 7,
        "version": 2,
    }
    latest = (await admin.movements(store, sku))[-1]
    assert (latest["reason"], latest["on_hand_delta"], latest["reserved_delta"], latest["damaged_delta"]) == (
        "safety_stock",
        0,
        0,
        0,
    )
    too_many = {"location_id": store, "channel": "ecommerce", "lines": [{"sku": sku, "qty": 8}]}
    refused = await ecommerce.post("/v1/reservations", json=too_many)
    assert refused.json()["shortages"] == [{"sku": sku, "requested": 8, "available": 7}]
    unknown = await admin.put(f"/v1/locations/{unique('ghost')}/safety-stock/{sku}", json={"qty": 3})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_location")


async def test_pickup_lists_stores_holding_every_line_nearest_first(admin: Api, ecommerce: Api) -> None:
    a, b = unique("sku"), unique("sku")
    rotterdam = await admin.store(lat=ROTTERDAM[0], lon=ROTTERDAM[1])
    utrecht = await admin.store(lat=UTRECHT[0], lon=UTRECHT[1])
    amsterdam_short = await admin.store(lat=AMSTERDAM[0], lon=AMSTERDAM[1])
    amsterdam_closed = await admin.store(lat=AMSTERDAM[0], lon=AMSTERDAM[1], pickup=False)
    for store in (rotterdam, utrecht, amsterdam_closed):
        await admin.receive(store, a, 2)
        await admin.receive(store, b, 1)
    await admin.receive(amsterdam_short, a, 2)  # and no b

    answer = await ecommerce.get("/v1/pickup", params={"sku": [a, b], "qty": [2], "near": "52.37,4.90"})

    assert answer.status_code == 200
    stores = answer.json()["stores"]
    assert [s["location_id"] for s in stores] == [utrecht, rotterdam]
    assert stores[0]["lines"] == [{"sku": a, "available": 2}, {"sku": b, "available": 1}]
    assert stores[0]["name"] == f"Store {utrecht}"
    assert 30 < stores[0]["distance_km"] < stores[1]["distance_km"] < 70
    assert stores[0]["distance_km"] == round(stores[0]["distance_km"], 1)
    assert (await ecommerce.get("/v1/pickup", params={"sku": [a, b], "qty": [3]})).json()["stores"] == []


async def test_pickup_without_near_has_no_distance_and_honours_limit(admin: Api, ecommerce: Api) -> None:
    sku = unique("sku")
    stores = [await admin.store() for _ in range(3)]
    for store in stores:
        await admin.receive(store, sku, 1)

    answer = await ecommerce.get("/v1/pickup", params={"sku": sku, "limit": 2})

    found = answer.json()["stores"]
    assert [s["location_id"] for s in found] == sorted(stores)[:2]
    assert all(s["distance_km"] is None for s in found)


async def test_movements_are_keyset_paged_oldest_first(admin: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    for qty in range(1, 6):
        await admin.receive(store, sku, qty)

    pages, after = [], 0
    while after is not None:
        page = (
            await admin.get(
                "/v1/movements", params={"location_id": store, "sku": sku, "after": after, "limit": 2}
            )
        ).json()
        pages.append(page["items"])
        after = page["next"]

    assert [len(page) for page in pages] == [2, 2, 1]
    movements = [m for page in pages for m in page]
    assert [m["on_hand_delta"] for m in movements] == [1, 2, 3, 4, 5]
    assert [m["id"] for m in movements] == sorted(m["id"] for m in movements)
    assert set(movements[0]) == {
        "id",
        "event_id",
        "type",
        "location_id",
        "sku",
        "on_hand_delta",
        "reserved_delta",
        "damaged_delta",
        "reason",
        "superseded_by_count",
        "reservation_id",
        "occurred_at",
        "recorded_at",
    }
    assert movements[0]["type"] == "receipt" and movements[0]["superseded_by_count"] is False
    exact = (await admin.get("/v1/movements", params={"location_id": store, "sku": sku, "limit": 5})).json()
    assert exact["next"] is None and len(exact["items"]) == 5


async def tail(admin: Api, location_id: str, after: str) -> tuple[list[dict[str, Any]], str]:
    """Every movement visible after the cursor, two a page, and where a tailing client resumes: the last
    page's ``next``, else its last item's ``id`` (the spec's cursor)."""
    items: list[dict[str, Any]] = []
    while True:
        page = (
            await admin.get("/v1/movements", params={"location_id": location_id, "after": after, "limit": 2})
        ).json()
        items += page["items"]
        if page["next"] is None:
            return items, str(items[-1]["id"]) if items else after
        after = page["next"]


SLOW_BATCH = (
    "UPDATE positions SET on_hand = on_hand + 2, version = version + 1 WHERE location_id = :l AND sku = :s",
    "INSERT INTO movements (event_id, type, location_id, sku, on_hand_delta, reserved_delta, damaged_delta,"
    " occurred_at, recorded_at) VALUES ('slow', 'receipt', :l, :s, 2, 0, 0, now(), now())",
)


async def test_paging_never_skips_a_movement_whose_transaction_commits_late(
    admin: Api, engine: AsyncEngine
) -> None:
    """A movement id is taken before commit: a transaction that commits after a later one must still show."""
    store, early, late = await admin.store(), unique("sku"), unique("sku")
    await admin.receive(store, early, 1)
    await admin.receive(store, late, 1)
    seen, resume = await tail(admin, store, "0")
    async with engine.connect() as slow:  # a batch that took its movement id first and commits last
        for sql in SLOW_BATCH:
            await slow.execute(text(sql), {"l": store, "s": late})
        await admin.receive(store, early, 3)  # committed first, with a higher id
        before_commit, resume = await tail(admin, store, resume)
        await slow.commit()
    seen += before_commit

    async def everything_seen() -> bool:
        nonlocal resume
        found, resume = await tail(admin, store, resume)
        seen.extend(found)
        return len(seen) >= 4

    await wait_until(everything_seen, what="every committed movement paged")
    # Nothing is shown past a transaction still running; once it commits, its movement comes in its place.
    assert {(m["sku"], m["on_hand_delta"]) for m in before_commit} <= {(early, 1), (late, 1)}
    assert [(m["sku"], m["on_hand_delta"]) for m in seen] == [(early, 1), (late, 1), (late, 2), (early, 3)]
    stored = await admin.get("/v1/movements", params={"location_id": store})
    assert [m["id"] for m in stored.json()["items"]] == [m["id"] for m in seen]


async def test_a_movement_cursor_is_a_next_or_a_movement_id(admin: Api) -> None:
    store, sku = await admin.store(), unique("sku")
    for qty in (1, 2, 3):
        await admin.receive(store, sku, qty)
    first = (await admin.get("/v1/movements", params={"location_id": store, "limit": 1})).json()
    (one,) = first["items"]

    by_next = await admin.get("/v1/movements", params={"location_id": store, "after": first["next"]})
    by_id = await admin.get("/v1/movements", params={"location_id": store, "after": one["id"]})
    bad = [
        await admin.get("/v1/movements", params={"after": after})
        for after in ("x", "1.", "-1", "9" * 21, "9" * 20 + ".1")
    ]
    unknown = await admin.get("/v1/movements", params={"after": 2**62})

    assert isinstance(first["next"], str)
    assert [m["on_hand_delta"] for m in by_next.json()["items"]] == [2, 3]
    assert by_id.json() == by_next.json()
    assert [(a.status_code, a.json().get("field")) for a in [*bad, unknown]] == [(400, "after")] * 6


async def test_locations_are_listed_as_put(admin: Api, ecommerce: Api) -> None:
    store = await admin.store(lat=AMSTERDAM[0], lon=AMSTERDAM[1])
    moved = await admin.put(f"/v1/locations/{store}", json={"kind": "warehouse", "name": "Moved"})
    listed = {loc["location_id"]: loc for loc in (await ecommerce.get("/v1/locations")).json()["items"]}

    assert moved.json() == {
        "location_id": store,
        "kind": "warehouse",
        "name": "Moved",
        "pickup_enabled": False,
        "lat": None,
        "lon": None,
    }
    assert listed[store] == moved.json()


async def test_an_availability_read_on_a_connection_that_died_is_503_once_then_answers(
    admin: Api, ecommerce: Api, engine: AsyncEngine
) -> None:
    """The read checks out the asyncpg connection itself (no SQLAlchemy `Connection` to invalidate it): a
    terminated backend must still leave the pool and answer `unavailable`, not 500, and not twice."""
    store, sku = await admin.store(), unique("sku")
    one = create_engine(engine.url.render_as_string(hide_password=False), pool_size=1)
    app = create_app(engine=one, ledger=GroupCommitLedger(one))
    transport = httpx.ASGITransport(app=app)
    params = {"sku": sku, "location_id": store}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://stocksync.test") as client:
            reader = Api(client, ecommerce.key)
            assert (await reader.get("/v1/availability", params=params)).status_code == 200
            async with one.connect() as conn:
                pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await asyncio.sleep(0.2)  # the FATAL message reaches the pooled connection

            died = await reader.get("/v1/availability", params=params)
            again = await reader.get("/v1/availability", params=params)
    finally:
        await one.dispose()
    assert (died.status_code, died.json()["error"]) == (503, "unavailable")
    assert again.status_code == 200


async def test_availability_reads_at_once_share_statements_and_each_gets_its_own_positions(
    admin: Api, ecommerce: Api
) -> None:
    """Reads that arrive while one is in the database are answered by the next statement together: each
    answer holds exactly its own positions (zeros for a sku never seen), and fewer statements ran than reads."""
    stores = [await admin.store() for _ in range(4)]
    skus = [unique("sku") for _ in range(40)]
    for n, sku in enumerate(skus):
        await admin.receive(stores[n % 4], sku, n + 1)
    for store in stores:  # the locations known to the API: each read below goes straight to the positions
        assert (
            await ecommerce.get("/v1/availability", params={"sku": skus[0], "location_id": store})
        ).is_success
    never = unique("sku")
    before = {part: _group_metric(part) for part in ("sum", "count")}

    answers = await asyncio.gather(
        *(
            ecommerce.get("/v1/availability", params={"sku": [sku, never], "location_id": stores[n % 4]})
            for n, sku in enumerate(skus)
        )
    )

    for n, (sku, answer) in enumerate(zip(skus, answers, strict=True)):
        assert [(i["location_id"], i["sku"], i["on_hand"]) for i in answer.json()["items"]] == [
            (stores[n % 4], sku, n + 1),
            (stores[n % 4], never, 0),
        ]
    reads, statements = (_group_metric(part) - before[part] for part in ("sum", "count"))
    assert reads == 40
    assert statements < reads


def _group_metric(part: str) -> float:
    return REGISTRY.get_sample_value(f"stocksync_position_read_group_{part}") or 0.0
