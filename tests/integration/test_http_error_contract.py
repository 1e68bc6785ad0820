"""Each error status the OpenAPI documents for an operation is one that a real request gets, with the
documented body; and none is documented that no request can get (every documented pair needs a request here).

401 and 503 are produced for every /v1 operation alike (no key; an app whose database does not answer); the
other statuses each by the request that earns them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest

from stocksync.adapters.database import create_engine
from stocksync.http.app import create_app
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_http import Api, admin, client, engine, unique  # noqa: F401  (fixtures)

LARGE = b'{"x": "' + b"a" * (300 * 1024) + b'"}'  # over the 256 KiB limit
PATH_VALUES = {
    "location_id": "store-x",
    "sku": "SKU-1",
    "reservation_id": "res-x",
    "event_id": "ev-x",
    "channel_id": "web-x",
    "order_id": "order-x",
    "webhook_id": "hook-x",
}


def _openapi() -> dict[str, Any]:
    engine = create_engine("postgresql://schema@127.0.0.1/schema")  # never connects
    return create_app(engine=engine, ledger=GroupCommitLedger(engine)).openapi_schema.to_schema()


OPENAPI = _openapi()
DOCUMENTED = [
    (method.upper(), path, int(status))
    for path, operations in OPENAPI["paths"].items()
    for method, operation in operations.items()
    for status in operation["responses"]
    if int(status) >= 400
]


def conforms(method: str, path: str, answer: httpx.Response) -> None:
    """The answer has a documented status and its body validates against that status's schema."""
    responses = OPENAPI["paths"][path][method.lower()]["responses"]
    assert str(answer.status_code) in responses, (method, path, answer.status_code, answer.text)
    schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
    root = {**schema, "components": OPENAPI["components"]}
    jsonschema_rs.validator_for(root).validate(answer.json())
    body = answer.json()
    if "error" in body:  # no key the error Structs do not declare (Litestar's schema allows extra ones)
        schemas = OPENAPI["components"]["schemas"]
        declared = {*schemas["ErrorBody"]["properties"], *schemas["ShortageError"]["properties"]}
        assert set(body) <= declared, body


def concrete(path: str) -> str:
    return path.format(**PATH_VALUES)


class World:
    """Stores, a few keys and what the requests below refer to."""

    def __init__(self, admin: Api) -> None:
        self.admin = admin

    async def build(self, engine: Any) -> World:
        admin = self.admin
        self.store, self.other = await admin.store(), await admin.store()
        self.sku = unique("sku")
        await admin.receive(self.store, self.sku, 500)
        self.pos = Api(admin.client, await create_key(engine, "pos", [self.other]))
        self.ecommerce = Api(admin.client, await create_key(engine, "ecommerce"))
        self.staff = Api(admin.client, await create_key(engine, "staff", [self.store]))
        self.channel = unique("web")
        body = {"name": "Web", "locations": [self.store]}
        assert (await admin.put(f"/v1/channels/{self.channel}", json=body)).status_code == 200
        return self

    def order(self, qty: int = 1, **extra: Any) -> dict[str, Any]:
        lines = [{"sku": self.sku, "qty": qty}]
        return {"order_id": unique("order"), "channel_id": self.channel, "lines": lines, **extra}

    def reserve(self, qty: int = 1, **extra: Any) -> dict[str, Any]:
        lines = [{"sku": self.sku, "qty": qty}]
        return {"location_id": self.store, "channel": "ecommerce", "lines": lines, **extra}

    async def settled(self, how: str) -> str:
        """A reservation already collected or cancelled."""
        held = await self.admin.post("/v1/reservations", json=self.reserve())
        reservation_id = held.json()["reservation_id"]
        assert (await self.admin.post(f"/v1/reservations/{reservation_id}/{how}")).status_code == 200
        return reservation_id


Produce = Callable[[World], Awaitable[httpx.Response]]
R, RC = "/v1/reservations", "/v1/reservations/{reservation_id}"
C, O, OC = "/v1/channels/{channel_id}", "/v1/orders", "/v1/orders/{order_id}"


async def _conflict(w: World) -> httpx.Response:
    """The same reservation id posted again with another body."""
    reservation_id = unique("res")
    assert (await w.admin.post(R, json=w.reserve(reservation_id=reservation_id))).status_code == 201
    return await w.admin.post(R, json=w.reserve(qty=2, reservation_id=reservation_id))


async def _not_held(w: World, settle: str, then: str) -> httpx.Response:
    return await w.admin.post(f"{R}/{await w.settled(settle)}/{then}")


async def _as_pos(w: World, how: str) -> httpx.Response:
    held = await w.admin.post(R, json=w.reserve())
    return await w.pos.post(f"{R}/{held.json()['reservation_id']}/{how}")


def _large(method: str, path: str) -> Produce:
    async def send(w: World) -> httpx.Response:
        return await w.admin.request(method, path.format(location_id=w.store, sku=w.sku), content=LARGE)

    return send


async def _order_not_allocated(w: World, settle: str, then: str) -> httpx.Response:
    order_id = (await w.admin.post(O, json=w.order())).json()["order_id"]
    assert (await w.admin.post(f"{O}/{order_id}/{settle}")).status_code == 200
    return await w.admin.post(f"{O}/{order_id}/{then}")


W = "/v1/webhooks/{webhook_id}"
HOOK = {"url": "http://127.0.0.1:9/erp", "subjects": ["stocksync.out.availability.>"], "secret": "x" * 16}

PRODUCERS: dict[tuple[str, str, int], Produce] = {
    ("GET", "/v1/webhooks", 403): lambda w: w.ecommerce.get("/v1/webhooks"),
    ("PUT", W, 400): lambda w: w.admin.put(
        "/v1/webhooks/hook-y", json={**HOOK, "subjects": ["stocksync.in.>"]}
    ),
    ("PUT", W, 403): lambda w: w.staff.put("/v1/webhooks/hook-y", json=HOOK),
    ("PUT", W, 413): _large("PUT", "/v1/webhooks/hook-y"),
    ("DELETE", W, 400): lambda w: w.admin.request("DELETE", "/v1/webhooks/bad.id"),
    ("DELETE", W, 403): lambda w: w.pos.request("DELETE", "/v1/webhooks/hook-y"),
    ("DELETE", W, 404): lambda w: w.admin.request("DELETE", f"/v1/webhooks/{unique('ghost')}"),
    ("GET", W + "/deliveries", 400): lambda w: w.admin.get(
        "/v1/webhooks/hook-y/deliveries", params={"limit": 0}
    ),
    ("GET", W + "/deliveries", 403): lambda w: w.ecommerce.get("/v1/webhooks/hook-y/deliveries"),
    ("GET", W + "/deliveries", 404): lambda w: w.admin.get(f"/v1/webhooks/{unique('ghost')}/deliveries"),
    ("PUT", C, 400): lambda w: w.admin.put("/v1/channels/web-y", json={"name": "x"}),
    ("PUT", C, 403): lambda w: w.ecommerce.put("/v1/channels/web-y", json={"name": "x", "locations": []}),
    ("PUT", C, 404): lambda w: w.admin.put("/v1/channels/web-y", json={"name": "x", "locations": ["ghost"]}),
    ("PUT", C, 413): _large("PUT", "/v1/channels/web-y"),
    ("GET", C, 400): lambda w: w.admin.get("/v1/channels/bad.id"),
    ("GET", C, 404): lambda w: w.admin.get(f"/v1/channels/{unique('ghost')}"),
    ("GET", C + "/availability", 400): lambda w: w.admin.get(f"/v1/channels/{w.channel}/availability"),
    ("GET", C + "/availability", 404): lambda w: w.admin.get(
        "/v1/channels/ghost/availability", params={"sku": "a"}
    ),
    ("POST", O, 400): lambda w: w.admin.post(O, json={"order_id": "o"}),
    ("POST", O, 403): lambda w: w.pos.post(O, json=w.order()),
    ("POST", O, 404): lambda w: w.admin.post(O, json={**w.order(), "channel_id": "ghost"}),
    ("POST", O, 409): lambda w: w.admin.post(O, json=w.order(qty=100_000)),
    ("POST", O, 413): _large("POST", O),
    ("GET", OC, 400): lambda w: w.admin.get(f"{O}/bad.id"),
    ("GET", OC, 404): lambda w: w.admin.get(f"{O}/{unique('order')}"),
    ("POST", OC + "/ship", 400): lambda w: w.admin.post(f"{O}/bad.id/ship"),
    ("POST", OC + "/ship", 403): lambda w: w.staff.post(f"{O}/{unique('order')}/ship"),
    ("POST", OC + "/ship", 404): lambda w: w.admin.post(f"{O}/{unique('order')}/ship"),
    ("POST", OC + "/ship", 409): lambda w: _order_not_allocated(w, "cancel", "ship"),
    ("POST", OC + "/cancel", 400): lambda w: w.admin.post(f"{O}/bad.id/cancel"),
    ("POST", OC + "/cancel", 403): lambda w: w.staff.post(f"{O}/{unique('order')}/cancel"),
    ("POST", OC + "/cancel", 404): lambda w: w.admin.post(f"{O}/{unique('order')}/cancel"),
    ("POST", OC + "/cancel", 409): lambda w: _order_not_allocated(w, "ship", "cancel"),
    ("GET", "/v1/availability", 400): lambda w: w.admin.get("/v1/availability"),
    ("GET", "/v1/availability", 404): lambda w: w.admin.get(
        "/v1/availability", params={"sku": w.sku, "location_id": unique("ghost")}
    ),
    ("GET", "/v1/stream", 400): lambda w: w.admin.get("/v1/stream", params={"location_id": w.store}),
    ("GET", "/v1/stream", 404): lambda w: w.admin.get(
        "/v1/stream", params={"sku": w.sku, "location_id": unique("ghost")}
    ),
    ("GET", "/v1/pickup", 400): lambda w: w.admin.get("/v1/pickup", params={"sku": w.sku, "near": "north"}),
    ("GET", "/v1/movements", 400): lambda w: w.admin.get("/v1/movements", params={"limit": 0}),
    ("GET", R, 400): lambda w: w.admin.get(R, params={"status": "lost"}),
    ("GET", R, 403): lambda w: w.pos.get(R, params={"location_id": w.store}),
    ("POST", R, 400): lambda w: w.admin.post(R, json={"location_id": w.store}),
    ("POST", R, 403): lambda w: w.pos.post(R, json=w.reserve()),
    ("POST", R, 404): lambda w: w.admin.post(R, json={**w.reserve(), "location_id": unique("ghost")}),
    ("POST", R, 409): lambda w: w.admin.post(R, json=w.reserve(qty=100_000)),
    ("POST", R, 413): _large("POST", R),
    ("GET", RC, 400): lambda w: w.admin.get(f"{R}/bad.id"),
    ("GET", RC, 404): lambda w: w.admin.get(f"{R}/{unique('res')}"),
    ("POST", RC + "/collect", 400): lambda w: w.admin.post(f"{R}/bad.id/collect"),
    ("POST", RC + "/collect", 403): lambda w: _as_pos(w, "collect"),
    ("POST", RC + "/collect", 404): lambda w: w.admin.post(f"{R}/{unique('res')}/collect"),
    ("POST", RC + "/collect", 409): lambda w: _not_held(w, "cancel", "collect"),
    ("POST", RC + "/cancel", 400): lambda w: w.admin.post(f"{R}/bad.id/cancel"),
    ("POST", RC + "/cancel", 403): lambda w: _as_pos(w, "cancel"),
    ("POST", RC + "/cancel", 404): lambda w: w.admin.post(f"{R}/{unique('res')}/cancel"),
    ("POST", RC + "/cancel", 409): lambda w: _not_held(w, "collect", "cancel"),
    ("POST", "/v1/events", 400): lambda w: w.admin.post("/v1/events", content=b"not json"),
    ("POST", "/v1/events", 403): lambda w: w.ecommerce.event("sale", w.store, [{"sku": w.sku, "qty": 1}]),
    ("POST", "/v1/events", 413): _large("POST", "/v1/events"),
    ("GET", "/v1/events/{event_id}", 400): lambda w: w.admin.get("/v1/events/" + "e" * 129),
    ("GET", "/v1/events/{event_id}", 404): lambda w: w.admin.get(f"/v1/events/{unique('ev')}"),
    ("PUT", "/v1/locations/{location_id}", 400): lambda w: w.admin.put(f"/v1/locations/{w.other}", json={}),
    ("PUT", "/v1/locations/{location_id}", 403): lambda w: w.staff.put(
        f"/v1/locations/{w.store}", json={"kind": "store", "name": "mine"}
    ),
    ("PUT", "/v1/locations/{location_id}", 413): _large("PUT", "/v1/locations/{location_id}"),
    ("PUT", "/v1/locations/{location_id}/safety-stock/{sku}", 400): lambda w: w.admin.put(
        f"/v1/locations/{w.store}/safety-stock/{w.sku}", json={"qty": -1}
    ),
    ("PUT", "/v1/locations/{location_id}/safety-stock/{sku}", 403): lambda w: w.staff.put(
        f"/v1/locations/{w.store}/safety-stock/{w.sku}", json={"qty": 1}
    ),
    ("PUT", "/v1/locations/{location_id}/safety-stock/{sku}", 404): lambda w: w.admin.put(
        f"/v1/locations/{unique('ghost')}/safety-stock/{w.sku}", json={"qty": 1}
    ),
    ("PUT", "/v1/locations/{location_id}/safety-stock/{sku}", 413): _large(
        "PUT", "/v1/locations/{location_id}/safety-stock/{sku}"
    ),
}


@pytest.fixture(scope="module")
async def world(admin: Api, engine: Any) -> World:
    return await World(admin).build(engine)


@pytest.fixture(scope="module")
async def unreachable() -> Any:
    """The API over a database that refuses connections, and a key it has never seen."""
    dead = create_engine("postgresql://postgres@127.0.0.1:1/nothing")
    app = create_app(engine=dead, ledger=GroupCommitLedger(dead))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dead.test") as client:
        yield Api(client, "ssk_" + "1" * 12 + "_" + "B" * 43)
    await dead.dispose()


def test_every_documented_error_has_a_request_that_produces_it() -> None:
    generic = {401, 503}
    specific = {(m, p, s) for m, p, s in DOCUMENTED if s not in generic and p.startswith("/v1/")}
    assert specific <= set(PRODUCERS), sorted(specific - set(PRODUCERS))
    unkeyed = {(m, p, s) for m, p, s in DOCUMENTED if not p.startswith("/v1/")}
    assert unkeyed == {("GET", "/health/ready", 503)}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [cell for cell in DOCUMENTED if cell[2] not in (401, 503) and cell[1].startswith("/v1/")],
)
async def test_a_real_request_gets_each_documented_error(
    method: str, path: str, status: int, world: World
) -> None:
    answer = await PRODUCERS[(method, path, status)](world)
    assert answer.status_code == status, answer.text
    conforms(method, path, answer)


@pytest.mark.parametrize(("method", "path"), sorted({(m, p) for m, p, s in DOCUMENTED if s == 401}))
async def test_every_v1_operation_answers_401_without_a_key(
    method: str, path: str, client: httpx.AsyncClient
) -> None:
    answer = await Api(client, None).request(method, concrete(path), json={})
    assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized")
    conforms(method, path, answer)


@pytest.mark.parametrize(("method", "path"), sorted({(m, p) for m, p, s in DOCUMENTED if s == 503}))
async def test_every_operation_answers_503_while_the_database_is_unreachable(
    method: str, path: str, unreachable: Api
) -> None:
    answer = await unreachable.request(method, concrete(path), json={})
    assert answer.status_code == 503, answer.text
    conforms(method, path, answer)
    if path.startswith("/v1/"):
        assert answer.json()["error"] == "unavailable"


async def test_a_reservation_id_posted_again_with_another_body_is_a_documented_409(world: World) -> None:
    answer = await _conflict(world)
    assert (answer.status_code, answer.json()["error"]) == (409, "event_id_conflict"), answer.text
    conforms("POST", R, answer)


async def test_a_movements_cursor_past_bigint_is_invalid_not_a_server_error(admin: Api) -> None:
    """Found by schemathesis: ``after`` beyond 2**63 - 1 reached the database and answered 500."""
    answer = await admin.get("/v1/movements", params={"after": 2**63})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), answer.text
    conforms("GET", "/v1/movements", answer)


@pytest.mark.parametrize(
    "url",
    [
        "http://erp.example/stock\x00",  # PostgreSQL text refuses NUL: the insert answered 500
        "http://erp.example/\x18stock",
        "http://\U0001f60d\x9d!erp/stock",  # no IDNA host: every delivery would raise httpx.InvalidURL
        "http://[::1/stock",
    ],
)
async def test_a_webhook_url_that_cannot_be_stored_or_posted_to_is_invalid_not_a_server_error(
    admin: Api, url: str
) -> None:
    """Found by schemathesis in CI: a URL with a NUL reached the database and answered 500."""
    answer = await admin.put(f"/v1/webhooks/{unique('hook')}", json={**HOOK, "url": url})
    assert (answer.status_code, answer.json()["error"], answer.json().get("field")) == (
        400,
        "invalid_request",
        "url",
    ), answer.text
    conforms("PUT", W, answer)
