"""Every metric the shipped alert rules and dashboard query is served by a running process: each role of
`stocksync serve` started as a process of its own, given real traffic, and each /metrics scraped."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from stocksync.adapters.database import create_engine
from stocksync.embedded.processes import free_port
from stocksync.messaging.nats_auth import new_seed
from stocksync.service.keys import create_key
from tests.support_ledger import receipt
from tests.support_monitoring import queried_metrics
from tests.support_nats import ServiceProcess, jetstream, prepare, processes, wait_until

ROLES = ("api", "worker", "relay", "sweeper", "auth")


def scrape(url: str) -> dict[str, float]:
    """Sample name (with its labels) -> value; {} while the process does not answer yet."""
    try:
        answer = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def names(samples: dict[str, float]) -> set[str]:
    return {key.partition("{")[0] for key in samples}


def role_process(role: str, database_url: str, nats_url: str, tmp_path: Path) -> tuple[ServiceProcess, str]:
    """A process of one role and the URL of its /metrics (the API's port for the API, its own for others)."""
    service = ServiceProcess([role], database_url, nats_url, tmp_path / f"{role}.log")
    port = free_port()
    service.env["STOCKSYNC_LOG_FORMAT"] = "json"
    service.env["STOCKSYNC_HTTP_PORT" if role == "api" else "STOCKSYNC_METRICS_PORT"] = str(port)
    if role == "api":  # the default: /metrics on the API port
        del service.env["STOCKSYNC_METRICS_PORT"]
    if role == "auth":  # the callout runs only with an issuer; on an open server no request comes
        service.env["STOCKSYNC_NATS_AUTH_ISSUER_SEED"] = new_seed("account")
    return service, f"http://127.0.0.1:{port}/metrics"


async def until_scraped(
    urls: dict[str, str], want: set[str], seconds: float = 60
) -> dict[str, dict[str, float]]:
    """Scrape every process until each answers and together they serve ``want`` (or the time is up)."""
    deadline = time.monotonic() + seconds
    while True:
        scraped = {role: await asyncio.to_thread(scrape, url) for role, url in urls.items()}
        served = set().union(*map(names, scraped.values()))
        if (all(scraped.values()) and want <= served) or time.monotonic() > deadline:
            return scraped
        await asyncio.sleep(0.5)


async def test_every_metric_the_rules_and_the_dashboard_query_is_served(
    tmp_path: Path, fresh_database, nats_server_factory
) -> None:
    nats = nats_server_factory()
    database_url, store = fresh_database(), f"store-{uuid.uuid4().hex[:8]}"
    await prepare(database_url, nats.url, [store])
    engine = create_engine(database_url, pool_size=1)
    key = await create_key(engine, "admin")
    await engine.dispose()
    started = {role: role_process(role, database_url, nats.url, tmp_path) for role in ROLES}
    urls = {role: url for role, (_, url) in started.items()}
    api = urls["api"].removesuffix("/metrics")
    async with processes(*(service for service, _ in started.values())) as running:
        up = await until_scraped(urls, {"stocksync_roles"})
        assert all(up.values()), {service.roles[0]: service.log_tail() for service in running}
        async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {key}"}) as http:
            event = msgspec.to_builtins(receipt(store, {"SKU-M": 5}))
            assert (await http.post("/v1/events", json=event)).json()["outcome"] == "applied"
            reserve = {"location_id": store, "channel": "ecommerce", "lines": [{"sku": "SKU-M", "qty": 1}]}
            assert (await http.post("/v1/reservations", json=reserve)).status_code == 201
            assert (await http.get("/v1/locations", headers={"Authorization": ""})).status_code == 401
        async with jetstream(nats.url) as (_, js):
            await js.publish(f"stocksync.in.{store}.sale", b"not json")  # a dead letter
        scraped = await until_scraped(urls, queried_metrics() | {"stocksync_dead_letters_total"})
        logs = {service.roles[0]: service.log_tail() for service in running}
    served = set().union(*map(names, scraped.values()))
    assert queried_metrics() - served == set(), logs
    for role, samples in scraped.items():
        assert samples[f"stocksync_roles{{role={role}}}"] == 1, role
    assert scraped["api"]["stocksync_http_requests_total{method=POST,route=/v1/events,status=200}"] == 1
    assert scraped["worker"]["stocksync_dead_letters_total{error=undecodable}"] == 1
    assert scraped["relay"]["stocksync_relay_leading{}"] == 1


async def test_api_processes_sharing_a_port_are_each_scraped_on_their_own_and_sum_to_every_request(
    tmp_path: Path, fresh_database, nats_server
) -> None:
    """SO_REUSEPORT spreads connections among the processes as the kernel likes: each counts its own, and
    their sum over the per-process metrics ports is every request made."""
    database_url, api_port = fresh_database(), free_port()
    await prepare(database_url, nats_server.url, [])
    services = []
    for n in range(2):
        service = ServiceProcess(["api"], database_url, nats_server.url, tmp_path / f"api-{n}.log")
        ports = {"STOCKSYNC_HTTP_PORT": str(api_port), "STOCKSYNC_METRICS_PORT": str(free_port())}
        service.env.update(ports, STOCKSYNC_LOG_FORMAT="json")
        services.append(service)
    urls = {s.log_path.stem: f"http://127.0.0.1:{s.env['STOCKSYNC_METRICS_PORT']}/metrics" for s in services}

    async def serving() -> bool:  # the API's socket is bound (after the metrics listener)
        return all('"event": "serving"' in service.current_log() for service in services)

    async with processes(*services):
        await wait_until(serving, what="both API processes serving")
        for _ in range(20):  # a connection each, so the kernel may pick either process every time
            async with httpx.AsyncClient() as fresh:
                assert (await fresh.get(f"http://127.0.0.1:{api_port}/health/live")).status_code == 200
        scraped = {n: await asyncio.to_thread(scrape, url) for n, url in urls.items()}
    counted = [
        samples.get("stocksync_http_requests_total{method=GET,route=/health/live,status=200}", 0)
        for samples in scraped.values()
    ]
    assert sum(counted) == 20, counted
