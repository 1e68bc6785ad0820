"""API keys and roles: 401 without a valid key, 403 outside its scope, nothing moved by a refused request."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.domain.errors import InvalidRequest, Unauthorized
from stocksync.service.keys import KeyVerifier, create_key
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


def sale(location_id: str, sku: str = "SKU-1") -> dict:
    return {
        "event_id": unique("till"),
        "type": "sale",
        "location_id": location_id,
        "occurred_at": now_iso(),
        "lines": [{"sku": sku, "qty": 1}],
    }


def reserve(location_id: str, sku: str = "SKU-1") -> dict:
    return {"location_id": location_id, "channel": "staff", "lines": [{"sku": sku, "qty": 1}]}


async def test_missing_malformed_and_unknown_keys_are_401(admin: Api) -> None:
    client = admin.client
    forged = "ssk_" + "0" * 12 + "_" + "A" * 43
    real_id_wrong_secret = admin.key[:17] + "B" * 43  # type: ignore[index]
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Bearer {real_id_wrong_secret}"},
    ):
        answer = await client.get("/v1/locations", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"] == "unauthorized"


async def test_health_metrics_and_schema_need_no_key(admin: Api) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/schema/openapi.json"):
        assert (await admin.client.get(path)).status_code == 200, path


async def test_pos_posts_sales_and_returns_at_its_own_store_only(
    admin: Api, as_key, engine: AsyncEngine
) -> None:
    own, other, sku = await admin.store(), await admin.store(), unique("sku")
    await admin.receive(own, sku, 5)
    await admin.receive(other, sku, 5)
    pos = await as_key("pos", [own])

    sold = await pos.post("/v1/events", json=sale(own, sku))
    elsewhere = await pos.post("/v1/events", json=(refused := sale(other, sku)))
    receipt = await pos.event("receipt", own, [{"sku": sku, "qty": 1}])
    reserving = await pos.post("/v1/reservations", json=reserve(own, sku))

    assert (sold.status_code, sold.json()["outcome"]) == (200, "applied")
    assert [a.status_code for a in (elsewhere, receipt, reserving)] == [403, 403, 403]
    assert all(a.json()["error"] == "forbidden" for a in (elsewhere, receipt, reserving))
    assert [(await admin.position(s, sku))["on_hand"] for s in (own, other)] == [4, 5]
    assert (await admin.position(own, sku))["reserved"] == 0
    assert (
        await scalar(
            engine, "SELECT count(*) FROM processed_events WHERE event_id = :e", e=refused["event_id"]
        )
        == 0
    )
    assert (await pos.get("/v1/availability", params={"sku": sku})).status_code == 200  # pos may read


async def test_staff_acts_at_its_own_locations(admin: Api, as_key) -> None:
    own, other, sku = await admin.store(pickup=False), await admin.store(), unique("sku")
    await admin.receive(own, sku, 5)
    staff = await as_key("staff", [own])

    counted = await staff.event("count", own, [{"sku": sku, "counted": 4}])
    held = await staff.post("/v1/reservations", json=reserve(own, sku))
    elsewhere = await staff.post("/v1/reservations", json=reserve(other, sku))
    listing_elsewhere = await staff.get("/v1/reservations", params={"location_id": other})
    listing = await staff.get("/v1/reservations")

    assert counted.json()["outcome"] == "applied"
    assert held.status_code == 201
    assert (elsewhere.status_code, listing_elsewhere.status_code) == (403, 403)
    assert [r["reservation_id"] for r in listing.json()["items"]] == [held.json()["reservation_id"]]
    cancelled = await staff.post(f"/v1/reservations/{held.json()['reservation_id']}/cancel")
    assert cancelled.status_code == 200
    assert (await staff.get("/v1/locations")).status_code == 200
    renamed = await staff.put(f"/v1/locations/{own}", json={"kind": "store", "name": "mine"})
    assert renamed.status_code == 403


async def test_ecommerce_reserves_only_at_pickup_stores(admin: Api, ecommerce: Api) -> None:
    pickup, closed, sku = await admin.store(), await admin.store(pickup=False), unique("sku")
    for store in (pickup, closed):
        await admin.receive(store, sku, 5)

    held = await ecommerce.post("/v1/reservations", json=reserve(pickup, sku))
    refused = await ecommerce.post("/v1/reservations", json=reserve(closed, sku))
    unknown = await ecommerce.post("/v1/reservations", json=reserve(unique("ghost"), sku))
    sold = await ecommerce.post("/v1/events", json=sale(pickup, sku))

    assert held.status_code == 201
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_location")
    assert sold.status_code == 403
    assert [(await admin.position(s, sku))["reserved"] for s in (pickup, closed)] == [1, 0]


async def test_a_store_whose_pickup_is_switched_off_refuses_the_next_ecommerce_reservation(
    admin: Api, ecommerce: Api
) -> None:
    """The API remembers a store it checked for a second; changing the store here forgets it at once."""
    store, sku = await admin.store(), unique("sku")
    await admin.receive(store, sku, 5)
    held = await ecommerce.post("/v1/reservations", json=reserve(store, sku))
    closing = {"kind": "store", "name": "closed for pickup", "pickup_enabled": False}
    assert (await admin.put(f"/v1/locations/{store}", json=closing)).status_code == 200
    refused = await ecommerce.post("/v1/reservations", json=reserve(store, sku))
    assert (held.status_code, refused.status_code) == (201, 403)
    assert (await admin.position(store, sku))["reserved"] == 1


async def test_only_admin_changes_locations_and_safety_stock(admin: Api, ecommerce: Api, as_key) -> None:
    store = await admin.store()
    staff = await as_key("staff", [store])
    for key in (ecommerce, staff):
        renamed = await key.put(f"/v1/locations/{store}", json={"kind": "store", "name": "x"})
        buffered = await key.put(f"/v1/locations/{store}/safety-stock/SKU-1", json={"qty": 1})
        assert (renamed.status_code, buffered.status_code) == (403, 403)
    assert (await admin.position(store, "SKU-1"))["version"] == 0


async def test_keys_are_stored_hashed_and_checked_by_role(engine: AsyncEngine) -> None:
    key = await create_key(engine, "pos", ["store-a", "store-a", "store-b"], label="till 3")
    key_id = key.split("_")[1]

    stored = await scalar(engine, "SELECT secret_hash FROM api_keys WHERE key_id = :k", k=key_id)
    verified = await KeyVerifier(engine).verify(key)

    assert key.startswith("ssk_") and len(stored) == 32 and key.split("_", 2)[2].encode() not in stored
    assert (verified.role, verified.locations) == ("pos", frozenset({"store-a", "store-b"}))
    for role, locations, field in (
        ("root", (), "role"),
        ("pos", (), "locations"),
        ("admin", ["x"], "locations"),
        ("staff", ["bad id"], "locations"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await create_key(engine, role, locations)
        assert refused.value.extra["field"] == field


async def test_without_its_listener_a_revoked_key_stops_working_once_its_cache_entry_expires(
    engine: AsyncEngine,
) -> None:
    now = [0.0]
    verifier = KeyVerifier(engine, fallback_ttl_s=10, clock=lambda: now[0])
    key = await create_key(engine, "ecommerce")
    await verifier.verify(key)
    async with engine.begin() as conn:
        revoke = text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :k")
        await conn.execute(revoke, {"k": key.split("_")[1]})

    await verifier.verify(key)  # still cached
    now[0] = 11.0
    with pytest.raises(Unauthorized):
        await verifier.verify(key)


async def test_requests_finding_a_key_expired_at_once_share_one_read(engine: AsyncEngine) -> None:
    class CountingVerifier(KeyVerifier):
        loads = 0

        async def _load(self, key_id: str):
            self.loads += 1
            return await super()._load(key_id)

    now = [0.0]
    verifier = CountingVerifier(engine, fallback_ttl_s=10, clock=lambda: now[0])
    key = await create_key(engine, "ecommerce")
    first = await asyncio.gather(*(verifier.verify(key) for _ in range(20)))
    now[0] = 11.0
    again = await asyncio.gather(*(verifier.verify(key) for _ in range(20)))
    assert {k.role for k in first + again} == {"ecommerce"}
    assert verifier.loads == 2
