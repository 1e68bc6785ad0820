"""The HTTP API in process over the session's real database, keys of every role, and request builders.

Test modules import the fixtures they use (``from tests.support_http import admin, client, engine``). Every
test makes its own locations and skus with `unique`, since all of them share one database.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import create_engine
from stocksync.http.app import create_app
from stocksync.http.protocol import uvicorn_config
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Api:
    """An HTTP client that sends one API key (or none)."""

    def __init__(self, client: httpx.AsyncClient, key: str | None) -> None:
        self.client = client
        self.key = key

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return await self.client.request(method, path, headers=headers | kwargs.pop("headers", {}), **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", path, **kwargs)

    # -- the few steps most tests take ---------------------------------------------------------------------

    async def store(
        self, *, pickup: bool = True, lat: float | None = None, lon: float | None = None, kind: str = "store"
    ) -> str:
        location_id = unique("store")
        body = {
            "kind": kind,
            "name": f"Store {location_id}",
            "pickup_enabled": pickup,
            "lat": lat,
            "lon": lon,
        }
        answer = await self.put(f"/v1/locations/{location_id}", json=body)
        assert answer.status_code == 200, answer.text
        return location_id

    async def event(
        self, type_: str, location_id: str, lines: list[dict[str, Any]] | None = None, **extra: Any
    ) -> httpx.Response:
        body = {
            "event_id": unique("ev"),
            "type": type_,
            "location_id": location_id,
            "occurred_at": now_iso(),
            **({"lines": lines} if lines is not None else {}),
            **extra,
        }
        return await self.post("/v1/events", json=body)

    async def receive(self, location_id: str, sku: str, qty: int) -> None:
        answer = await self.event("receipt", location_id, [{"sku": sku, "qty": qty}])
        assert answer.json()["outcome"] == "applied", answer.text

    async def position(self, location_id: str, sku: str) -> dict[str, Any]:
        answer = await self.get("/v1/availability", params={"sku": sku, "location_id": location_id})
        assert answer.status_code == 200, answer.text
        (position,) = answer.json()["items"]
        return position

    async def movements(self, location_id: str, sku: str) -> list[dict[str, Any]]:
        params = {"location_id": location_id, "sku": sku, "limit": 1000}
        answer = await self.get("/v1/movements", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


@pytest.fixture(scope="session")
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine=engine, ledger=GroupCommitLedger(engine))  # as `stocksync serve` does
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stocksync.test") as client:
        yield client


@pytest.fixture(scope="session")
async def admin(engine: AsyncEngine, client: httpx.AsyncClient) -> Api:
    return Api(client, await create_key(engine, "admin", label="http tests"))


@pytest.fixture(scope="session")
async def ecommerce(engine: AsyncEngine, client: httpx.AsyncClient) -> Api:
    return Api(client, await create_key(engine, "ecommerce"))


@pytest.fixture
def as_key(engine: AsyncEngine, client: httpx.AsyncClient):
    """Factory of clients with a new key: ``await as_key("pos", [store])``."""

    async def make(role: str, locations: list[str] | None = None) -> Api:
        return Api(client, await create_key(engine, role, locations or ()))

    return make


class LiveApi:
    """`create_app` served as `stocksync serve` serves it, on a free loopback port, in a thread with its own
    event loop."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="live-api")

    async def _serve(self) -> None:
        engine = create_engine(self.database_url)
        app = create_app(engine=engine, ledger=GroupCommitLedger(engine))
        config = uvicorn_config(app, "127.0.0.1", self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        try:
            await self._server.serve()
        finally:
            await engine.dispose()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self._server is not None and self._server.started):
            assert self._thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=30)
