"""Health, metrics, OpenAPI, and the one error format for every failure, including the unexpected ones."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import httpx
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.dev import ConsoleRenderer
from structlog.testing import capture_logs

from stocksync.adapters.database import create_engine
from stocksync.domain.events import Command
from stocksync.http.app import create_app
from stocksync.server import nats_probe
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import BatchResult, LedgerService
from tests.support import NatsServer
from tests.support_http import Api, admin, client, engine, unique  # noqa: F401


def serve(app: Litestar) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stocksync.test")


async def test_live_and_ready(admin: Api) -> None:
    live = await admin.client.get("/health/live")
    ready = await admin.client.get("/health/ready")
    assert (live.status_code, live.json()["status"]) == (200, "ok")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ok", "checks": {"database": True}, "serves": {"api": True}},
    )


async def test_ready_is_degraded_not_503_when_a_check_but_the_database_fails(engine: AsyncEngine) -> None:
    async def up() -> bool:
        return True

    async def down() -> bool:
        raise ConnectionError("nats is gone")

    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    app = create_app(
        engine=engine,
        ledger=LedgerService(engine),
        readiness={"nats": down, "other": up, "slow": hangs},
        roles=("api", "relay", "sweeper"),
    )
    async with serve(app) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"database": True, "nats": False, "other": True, "slow": False},
        "serves": {"api": True, "relay": False, "sweeper": True},
    }


def dead_nats_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{probe.getsockname()[1]}"


async def test_nats_is_ready_when_any_server_of_the_cluster_answers(nats_server: NatsServer) -> None:
    dead = dead_nats_url()
    assert await nats_probe(f"{dead},{nats_server.url}")()
    assert await nats_probe(f"{nats_server.url}, {dead}")()
    assert not await nats_probe(f"{dead},{dead_nats_url()}")()


async def test_with_nats_stopped_the_api_is_ready_and_takes_reservations(
    engine: AsyncEngine, nats_server: NatsServer
) -> None:
    app = create_app(
        engine=engine, ledger=LedgerService(engine), readiness={"nats": nats_probe(nats_server.url)}
    )
    async with serve(app) as client:
        api = Api(client, await create_key(engine, "admin"))
        store, sku = await api.store(), unique("sku")
        await api.receive(store, sku, 3)
        nats_server.stop()
        try:
            ready = await client.get("/health/ready")
            body = {"location_id": store, "channel": "staff", "lines": [{"sku": sku, "qty": 1}]}
            reserved = await api.post("/v1/reservations", json=body)
        finally:
            nats_server.start()
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    assert ready.json()["checks"] == {"database": True, "nats": False}
    assert (reserved.status_code, reserved.json()["status"]) == (201, "held")


async def test_an_unreachable_database_is_503_not_500(engine: AsyncEngine) -> None:
    key = await create_key(engine, "admin")
    nowhere = create_engine("postgresql://postgres@127.0.0.1:1/stocksync")
    try:
        async with serve(create_app(engine=nowhere, ledger=LedgerService(nowhere))) as client:
            ready = await client.get("/health/ready")
            read = await client.get("/v1/locations", headers={"Authorization": f"Bearer {key}"})
    finally:
        await nowhere.dispose()
    assert (ready.status_code, ready.json()["status"]) == (503, "unavailable")
    assert ready.json()["checks"] == {"database": False} and ready.json()["serves"] == {"api": False}
    assert (read.status_code, read.json()["error"]) == (503, "unavailable")


async def test_an_unexpected_failure_is_a_bare_500_logged_without_key_or_message(engine: AsyncEngine) -> None:
    class Broken(LedgerService):
        async def apply(self, events: Sequence[Command]) -> BatchResult:
            raise RuntimeError(" ".join(("something", "nobody", "planned", "for")))

    key = await create_key(engine, "admin")
    store = unique("store")
    async with serve(create_app(engine=engine, ledger=Broken(engine))) as client:
        headers = {"Authorization": f"Bearer {key}"}
        await client.put(f"/v1/locations/{store}", json={"kind": "store", "name": "x"}, headers=headers)
        with capture_logs() as logs:
            answer = await client.put(
                f"/v1/locations/{store}/safety-stock/A", json={"qty": 1}, headers=headers
            )
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal", "detail": "internal error"}
    (entry,) = [line for line in logs if line["event"] != "http_request"]  # and its access line
    assert entry["event"] == "http_internal_error"
    assert "builtins.RuntimeError" in entry["exception"] and "in apply" in entry["exception"]
    assert "nobody planned" not in entry["exception"]  # a message may quote the request's body
    for rendered in (repr(entry), ConsoleRenderer(colors=False)(None, "error", dict(entry))):
        assert key.split("_", 2)[2] not in rendered


async def test_litestar_errors_come_in_the_same_format(admin: Api) -> None:
    no_route = await admin.get("/v1/nothing-here")
    wrong_method = await admin.request("DELETE", "/v1/locations")
    assert (no_route.status_code, no_route.json()["error"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert set(no_route.json()) == {"error", "detail"}


async def test_metrics_count_events_and_errors(admin: Api) -> None:
    store = await admin.store()
    await admin.receive(store, unique("sku"), 1)
    await admin.client.get("/v1/locations")  # 401

    metrics = await admin.client.get("/metrics")

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'stocksync_events_total{outcome="applied",type="receipt"}' in metrics.text
    assert 'stocksync_http_errors_total{code="unauthorized"}' in metrics.text


async def test_openapi_documents_every_path_bodies_and_the_bearer_scheme(admin: Api) -> None:
    schema = (await admin.client.get("/schema/openapi.json")).json()

    assert schema["info"] == {"title": "stocksync", "version": "0.1.0"}
    assert {
        "/v1/availability",
        "/v1/pickup",
        "/v1/reservations",
        "/v1/reservations/{reservation_id}",
        "/v1/reservations/{reservation_id}/collect",
        "/v1/reservations/{reservation_id}/cancel",
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/locations",
        "/v1/locations/{location_id}",
        "/v1/locations/{location_id}/safety-stock/{sku}",
        "/v1/movements",
        "/health/live",
        "/health/ready",
        "/metrics",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["apiKey"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "ssk_<key_id>_<secret>",
        "description": "",
    }
    reserve = schema["paths"]["/v1/reservations"]["post"]
    assert reserve["security"] == [{"apiKey": []}]
    body = reserve["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["location_id", "channel", "lines"]
    events = schema["paths"]["/v1/events"]["post"]
    events_body = events["requestBody"]["content"]["application/json"]["schema"]
    assert {option["title"] for option in events_body["anyOf"]} >= {"Sale", "Reserve", "Count"}
    assert "security" not in schema["paths"]["/health/ready"]["get"]
