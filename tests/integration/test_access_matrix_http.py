"""Every /v1 endpoint against every kind of caller, with the answer each cell must give (spec section 4; the
role rules of src/stocksync/http/auth.py), and nothing moved by a refused write.

Callers: no key, a malformed, an unknown and a revoked key (revoked before this API process ever saw it, so
no cached verification hides it), and one key of each role. ``_own`` keys act at their own store,
``_other`` keys (scoped to another store) at the same one; the ecommerce key acts at a pickup-enabled store
(``ecom``) and at one that is not (``ecom_closed``). Every case runs at a fresh sku: 10 received and 1 held by a
reservation, so the cell's effect, or its absence, is read off the ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.http.app import create_app
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_http import Api, admin, client, engine, now_iso, scalar, unique  # noqa: F401  (fixtures)

CALLERS = (
    "none", "malformed", "unknown", "revoked",
    "admin", "ecom", "ecom_closed", "staff_own", "staff_other", "pos_own", "pos_other",
)  # fmt: skip

# The expected status of each endpoint for each caller, in CALLERS' order.
MATRIX = """
endpoint            none malformed unknown revoked admin ecom ecom_closed staff_own staff_other pos_own pos_other
GET availability          401 401 401 401   200 200 200   200 200   200 200
GET pickup                401 401 401 401   200 200 200   200 200   200 200
GET movements             401 401 401 401   200 200 200   200 200   200 200
GET locations             401 401 401 401   200 200 200   200 200   200 200
GET reservation           401 401 401 401   200 200 200   200 200   200 200
GET reservations          401 401 401 401   200 200 200   200 403   200 403
GET event                 401 401 401 401   200 200 200   200 200   200 200
POST reservations         401 401 401 401   201 201 403   201 403   403 403
POST collect              401 401 401 401   200 200 403   200 403   403 403
POST cancel               401 401 401 401   200 200 403   200 403   403 403
POST event:sale           401 401 401 401   200 403 403   200 403   200 403
POST event:return         401 401 401 401   200 403 403   200 403   200 403
POST event:receipt        401 401 401 401   200 403 403   200 403   403 403
POST event:adjust         401 401 401 401   200 403 403   200 403   403 403
POST event:count          401 401 401 401   200 403 403   200 403   403 403
POST event:reserve        401 401 401 401   200 200 403   200 403   403 403
POST event:collect        401 401 401 401   200 200 403   200 403   403 403
POST event:cancel         401 401 401 401   200 200 403   200 403   403 403
PUT location              401 401 401 401   200 403 403   403 403   403 403
PUT safety-stock          401 401 401 401   200 403 403   403 403   403 403
"""


def _cells() -> list[tuple[str, str, int]]:
    header, *rows = [line.split() for line in MATRIX.strip().splitlines()]
    assert tuple(header[1:]) == CALLERS
    cells = []
    for row in rows:
        endpoint, statuses = f"{row[0]} {row[1]}", row[2:]
        assert len(statuses) == len(CALLERS), endpoint
        cells += [(endpoint, caller, int(status)) for caller, status in zip(CALLERS, statuses, strict=True)]
    return cells


class Scene:
    """One case's store and sku: 10 received, 1 held by ``reservation_id``; ``event_id`` is the receipt."""

    def __init__(self, location_id: str) -> None:
        self.location_id = location_id
        self.sku = unique("sku")
        self.reservation_id = unique("res")
        self.event_id = unique("ev")

    async def set_up(self, admin: Api) -> None:
        receipt = self.envelope("receipt", lines=[{"sku": self.sku, "qty": 10}], event_id=self.event_id)
        assert (await admin.post("/v1/events", json=receipt)).json()["outcome"] == "applied"
        held = await admin.post("/v1/reservations", json=self.reserve(self.reservation_id))
        assert held.status_code == 201, held.text

    def reserve(self, reservation_id: str) -> dict[str, Any]:
        return {
            "reservation_id": reservation_id,
            "location_id": self.location_id,
            "channel": "ecommerce",
            "lines": [{"sku": self.sku, "qty": 1}],
        }

    def envelope(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": unique("ev"),
            "type": type_,
            "location_id": self.location_id,
            "occurred_at": now_iso(),
            **fields,
        }

    def event(self, type_: str) -> dict[str, Any]:
        line = {"sku": self.sku}
        bodies: dict[str, dict[str, Any]] = {
            "sale": {"lines": [{**line, "qty": 1}]},
            "return": {"lines": [{**line, "qty": 1}]},
            "receipt": {"lines": [{**line, "qty": 1}]},
            "adjust": {"lines": [{**line, "delta": -1, "reason": "shrinkage"}]},
            "count": {"lines": [{**line, "counted": 3}]},
            "reserve": {**self.reserve(unique("res")), "ttl_seconds": 600},
            "collect": {"reservation_id": self.reservation_id},
            "cancel": {"reservation_id": self.reservation_id},
        }
        body = bodies[type_]
        body.pop("location_id", None)
        return self.envelope(type_, **body)


Request = Callable[[Api, Scene], Awaitable[httpx.Response]]


def _event(type_: str) -> Request:
    async def post(api: Api, scene: Scene) -> httpx.Response:
        return await api.post("/v1/events", json=scene.event(type_))

    return post


REVOKE = text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :k")
LOCATION = {"kind": "store", "name": "renamed by the matrix", "pickup_enabled": True}

def _at(s: Scene) -> dict[str, str]:
    return {"location_id": s.location_id, "sku": s.sku}


REQUESTS: dict[str, Request] = {
    "GET availability": lambda api, s: api.get("/v1/availability", params=_at(s)),
    "GET pickup": lambda api, s: api.get("/v1/pickup", params={"sku": s.sku}),
    "GET movements": lambda api, s: api.get("/v1/movements", params=_at(s)),
    "GET locations": lambda api, s: api.get("/v1/locations"),
    "GET reservation": lambda api, s: api.get(f"/v1/reservations/{s.reservation_id}"),
    "GET reservations": lambda api, s: api.get("/v1/reservations", params={"location_id": s.location_id}),
    "GET event": lambda api, s: api.get(f"/v1/events/{s.event_id}"),
    "POST reservations": lambda api, s: api.post("/v1/reservations", json=s.reserve(unique("res"))),
    "POST collect": lambda api, s: api.post(f"/v1/reservations/{s.reservation_id}/collect"),
    "POST cancel": lambda api, s: api.post(f"/v1/reservations/{s.reservation_id}/cancel"),
    **{f"POST event:{type_}": _event(type_) for type_ in ("sale", "return", "receipt", "adjust", "count")},
    **{f"POST event:{type_}": _event(type_) for type_ in ("reserve", "collect", "cancel")},
    "PUT location": lambda api, s: api.put(f"/v1/locations/{s.location_id}", json=LOCATION),
    "PUT safety-stock": lambda api, s: api.put(
        f"/v1/locations/{s.location_id}/safety-stock/{s.sku}", json={"qty": 1}
    ),
}


@pytest.fixture(scope="module")
async def world(admin: Api, engine: AsyncEngine, client: httpx.AsyncClient) -> dict[str, Any]:
    """The stores (``own`` and ``other`` pickup-enabled, ``closed`` not) and a client per caller."""
    own, other, closed = await admin.store(), await admin.store(), await admin.store(pickup=False)
    revoked = await create_key(engine, "admin")
    async with engine.begin() as conn:
        await conn.execute(REVOKE, {"k": revoked.split("_")[1]})
    keys = {
        "none": None,
        "malformed": "not-a-key",
        "unknown": "ssk_" + "0" * 12 + "_" + "A" * 43,
        "revoked": revoked,
        "admin": admin.key,
        "ecom": await create_key(engine, "ecommerce"),
        "staff_own": await create_key(engine, "staff", [own]),
        "staff_other": await create_key(engine, "staff", [other]),
        "pos_own": await create_key(engine, "pos", [own]),
        "pos_other": await create_key(engine, "pos", [other]),
    }
    keys["ecom_closed"] = keys["ecom"]
    return {
        "apis": {caller: Api(client, key) for caller, key in keys.items()},
        "at": {caller: closed if caller == "ecom_closed" else own for caller in CALLERS},
    }


async def _ledger(engine: AsyncEngine, admin: Api, scene: Scene) -> tuple[Any, ...]:
    """What a refused write must leave as it was: the position, the reservation, the store, the events."""
    position = await admin.position(scene.location_id, scene.sku)
    reservation = (await admin.get(f"/v1/reservations/{scene.reservation_id}")).json()
    name = await scalar(engine, "SELECT name FROM locations WHERE location_id = :l", l=scene.location_id)
    events = await scalar(
        engine, "SELECT count(*) FROM processed_events WHERE location_id = :l", l=scene.location_id
    )
    return position, reservation["status"], name, events


@pytest.mark.parametrize(("endpoint", "caller", "expected"), _cells())
async def test_access_matrix(
    endpoint: str, caller: str, expected: int, world: dict[str, Any], admin: Api, engine: AsyncEngine
) -> None:
    scene = Scene(world["at"][caller])
    await scene.set_up(admin)
    before = await _ledger(engine, admin, scene)

    answer = await REQUESTS[endpoint](world["apis"][caller], scene)

    assert answer.status_code == expected, answer.text
    if expected >= 400:
        assert answer.json()["error"] == {401: "unauthorized", 403: "forbidden"}[expected]
        assert await _ledger(engine, admin, scene) == before
    elif endpoint.startswith("POST event:"):
        assert answer.json()["outcome"] == "applied", answer.text


async def test_a_key_revoked_after_use_is_refused_by_an_api_that_has_not_cached_it(
    engine: AsyncEngine, admin: Api
) -> None:
    """The revocation is in the database; a process without a cached verification (a restart, or another
    API process past its cache TTL) refuses the key at once."""
    key = await create_key(engine, "ecommerce")
    assert (await Api(admin.client, key).get("/v1/locations")).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(REVOKE, {"k": key.split("_")[1]})
    fresh = create_app(engine=engine, ledger=GroupCommitLedger(engine))
    transport = httpx.ASGITransport(app=fresh)
    async with httpx.AsyncClient(transport=transport, base_url="http://fresh.test") as client:
        refused = await Api(client, key).get("/v1/locations")
    assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
