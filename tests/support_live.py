"""The running service for the live feed and the staff page, their feed fed by the real worker and relay, in
two shapes (the ``served`` fixture's parameters), each over a database of its own:

- ``process``: `stocksync serve` with every role in one process, on the session's (open) nats-server;
- ``compose``: compose.yaml's topology as local processes (`tests.support_compose`): three clustered
  nats-servers with NATS access on, two API processes sharing one port, two workers, two relays, two auth
  callouts, the sweeper and the webhooks deliverer.

Test modules import the fixture they use (``from tests.support_live import served``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from stocksync.embedded.processes import free_port
from stocksync.messaging.nats_auth import service_options
from stocksync.settings import Settings
from stocksync.wire import key_options
from tests.support import NatsServer, drop_database, make_database
from tests.support_compose import ComposeTopology
from tests.support_service import Service, service_env, stocksync_cli

HEARTBEAT_S = 0.5  # the feed's heartbeat in these tests (15 s in production)
QUEUE_MAX = 32  # updates one feed client may have waiting before it is dropped


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def event(type_: str, location_id: str, lines: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
    body = {
        "event_id": unique("ev"),
        "type": type_,
        "location_id": location_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    return body | ({"lines": lines} if lines is not None else {})


class Served:
    """The running service, an admin client for setting up, and keys of any role made with the CLI.

    ``metrics_urls``: the /metrics of every API process; ``nats_down``: a context in which NATS is away."""

    def __init__(
        self,
        base: str,
        env: dict[str, str],
        *,
        metrics_urls: list[str],
        nats_down: Callable[[], contextlib.AbstractContextManager[object]],
    ) -> None:
        self.env = env
        self.base = base
        self.nats_url = env["STOCKSYNC_NATS_URL"]
        self.metrics_urls = metrics_urls
        self.nats_down = nats_down
        self.admin = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.key('admin')}"}
        )

    def key(self, role: str, *locations: str) -> str:
        places = [arg for location in locations for arg in ("--location", location)]
        return (
            stocksync_cli(self.env, "keys", "create", "--role", role, *places).stdout.strip().splitlines()[-1]
        )

    def store(self, *, name: str | None = None, lat: float | None = None, lon: float | None = None) -> str:
        location_id = unique("store")
        body = {
            "kind": "store",
            "name": name or f"Store {location_id}",
            "pickup_enabled": True,
            "lat": lat,
            "lon": lon,
        }
        answer = self.admin.put(f"/v1/locations/{location_id}", json=body)
        assert answer.status_code == 200, answer.text
        return location_id

    def post_event(
        self, type_: str, location_id: str, lines: list[dict[str, Any]] | None = None, **extra
    ) -> dict:
        answer = self.admin.post("/v1/events", json=event(type_, location_id, lines, **extra))
        assert answer.status_code == 200 and answer.json()["outcome"] == "applied", answer.text
        return answer.json()

    def position(self, location_id: str, sku: str) -> dict[str, Any]:
        answer = self.admin.get("/v1/availability", params={"sku": sku, "location_id": location_id})
        assert answer.status_code == 200, answer.text
        return answer.json()["items"][0]

    def wait_for_feed(self, location_id: str, seconds: float = 60) -> None:
        """Until the feed of the API process is subscribed (it connects in the background)."""
        deadline = time.monotonic() + seconds
        params = {"location_id": location_id, "sku": "ANY"}
        while True:
            with self.admin.stream("GET", "/v1/stream", params=params) as answer:
                if answer.status_code == 200:
                    return
            assert time.monotonic() < deadline, "the live feed did not connect"
            time.sleep(0.2)

    def metric(self, name: str) -> float:
        """The sum of a Prometheus sample's values (every label set) on every API process's ``/metrics``."""
        texts = [httpx.get(url).text for url in self.metrics_urls]
        lines = [line for text in texts for line in text.splitlines()]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))

    async def nats(self) -> nats.NATS:
        """A connection as the service's own processes make it (the service user where access is on)."""
        return await nats.connect(self.nats_servers, **service_options(Settings.from_env(self.env)))

    @property
    def nats_servers(self) -> list[str]:
        return self.nats_url.split(",")


class Events:
    """The server-sent events of a response, one at a time: ``{"event", "id", "data", "comments"}``."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self._read(), timeout)

    async def until(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """The first event ``wanted`` accepts, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not wanted(found := await self.next(max(0.01, deadline - time.monotonic()))):
            pass
        return found

    async def _read(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        async for line in self._lines:
            if not line:
                if found:
                    return found
            elif line.startswith(":"):
                found.setdefault("comments", []).append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                found[name] = value.removeprefix(" ")
        raise EOFError(f"the stream ended ({found or 'between events'})")


def availability(event: dict[str, Any]) -> dict[str, Any] | None:
    return json.loads(event["data"]) if event.get("event") == "availability" else None


async def sell_over_nats(served: Served, pos_key: str, location_id: str, sku: str, qty: int) -> None:
    """A till's sale, published on the inbound stream as a till publishes it: connected with its pos key."""
    nc = await nats.connect(served.nats_servers, **key_options(pos_key))
    try:
        body = event("sale", location_id, [{"sku": sku, "qty": qty}])
        await nc.jetstream().publish(
            f"stocksync.in.{location_id}.sale",
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": body["event_id"]},
        )
    finally:
        await nc.close()


FEED_SETTINGS = {"stream_heartbeat_s": str(HEARTBEAT_S), "stream_queue_max": str(QUEUE_MAX)}


@pytest.fixture(scope="module", params=["process", "compose"])
def served(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    database_url = make_database(postgres_url)
    log_dir: Path = tmp_path_factory.mktemp(f"served-{request.param}")
    try:
        starts = _one_process if request.param == "process" else _compose_topology
        with starts(request, database_url, log_dir) as served:
            served.wait_for_feed(served.store())
            yield served
    finally:
        drop_database(postgres_url, database_url)


@contextlib.contextmanager
def _one_process(request: pytest.FixtureRequest, database_url: str, log_dir: Path) -> Iterator[Served]:
    nats_server: NatsServer = request.getfixturevalue("nats_server")
    env = service_env(
        database_url=database_url,
        nats_url=nats_server.url,
        http_port=str(free_port()),
        log_format="json",
        **FEED_SETTINGS,
    )
    stocksync_cli(env, "migrate")
    service = Service(env, log_dir / "serve.log")

    @contextlib.contextmanager
    def nats_down() -> Iterator[None]:
        nats_server.stop()
        try:
            yield
        finally:
            nats_server.start()

    served = Served(service.base, env, metrics_urls=[f"{service.base}/metrics"], nats_down=nats_down)
    try:
        yield served
    finally:
        served.admin.close()
        service.stop()


@contextlib.contextmanager
def _compose_topology(request: pytest.FixtureRequest, database_url: str, log_dir: Path) -> Iterator[Served]:
    topology = ComposeTopology(log_dir, database_url, **FEED_SETTINGS)
    try:
        topology.start()
        topology.until_logged("api", "live_feed_subscribed")  # each API process's feed, not the one met
        served = Served(
            topology.base,
            service_env() | topology.env,
            metrics_urls=topology.api_metrics_urls(),
            nats_down=topology.nats_down,
        )
        try:
            yield served
        finally:
            served.admin.close()
    finally:
        topology.stop()
