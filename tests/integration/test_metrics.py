"""What the metrics say after real work: HTTP requests with their request ids and access lines, the outbox
backlog, consumer lag and the reservation gauges, against the real PostgreSQL and nats-server."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY
from sqlalchemy import text

from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.aio import cancel_and_wait
from stocksync.clock import ManualClock
from stocksync.embedded.processes import free_port
from stocksync.messaging.relay import OutboxRelay
from stocksync.messaging.worker import EventWorker
from stocksync.migrate import migrate_database_async
from stocksync.server import serve
from stocksync.service.ledger_service import LedgerService
from stocksync.service.sweeper import ExpirySweeper
from stocksync.settings import Settings
from stocksync.wire import IN_STREAM, WORKER_CONSUMER
from stocksync_client.connection import connect
from tests.support_http import Api, admin, client, engine, unique  # noqa: F401  (fixtures)
from tests.support_ledger import receipt, reserve, store
from tests.support_nats import jetstream, prepare, publish_events, wait_until


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Log lines as structlog emits them, the bound context (the request id) merged in."""
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        yield lines


async def test_each_request_is_counted_by_route_template_and_status_and_timed(admin: Api) -> None:
    route = "/v1/reservations/{reservation_id}"
    before = value("stocksync_http_requests_total", route=route, method="GET", status="404")
    timed = value("stocksync_http_request_duration_seconds_count", route=route, method="GET")
    for _ in range(3):
        assert (await admin.get(f"/v1/reservations/{unique('res')}")).status_code == 404
    assert value("stocksync_http_requests_total", route=route, method="GET", status="404") == before + 3
    assert value("stocksync_http_request_duration_seconds_count", route=route, method="GET") == timed + 3


async def test_a_request_to_no_route_is_counted_unmatched_not_by_its_path(admin: Api) -> None:
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    before = value("stocksync_http_requests_total", **labels)
    assert (await admin.get(f"/v1/{unique('nowhere')}")).status_code == 404
    assert value("stocksync_http_requests_total", **labels) == before + 1


async def test_a_sane_request_id_is_echoed_and_logged_with_every_line_of_the_request(
    client: httpx.AsyncClient, logged: list[dict[str, Any]]
) -> None:
    answer = await client.get("/v1/locations", headers={"x-request-id": "lb-7f3a:42"})  # no key: 401
    assert answer.status_code == 401
    assert answer.headers["x-request-id"] == "lb-7f3a:42"
    access = [line for line in logged if line["event"] == "http_request"]
    seen = [(a["request_id"], a["route"], a["status"]) for a in access]
    assert seen == [("lb-7f3a:42", "/v1/locations", 401)]
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound once answered


@pytest.mark.parametrize("sent", [None, "", "a b", "x" * 129, "line\nbreak"])
async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_fresh_one(
    client: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"x-request-id": sent}
    first, second = [await client.get("/health/live", headers=headers) for _ in range(2)]
    ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
    assert len(ids) == 2 and sent not in ids
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)


async def test_the_outbox_gauges_count_what_waits_and_age_the_oldest_until_relayed(
    fresh_database, nats_server
) -> None:
    url = fresh_database()
    location_id = unique("store")
    await prepare(url, nats_server.url, [location_id])
    engine = create_engine(url, pool_size=2)
    nc = await connect(nats_server.url)
    try:
        await LedgerService(engine).apply([receipt(location_id, {"SKU-A": 5, "SKU-B": 1})])
        async with engine.begin() as conn:  # as if committed 90 s ago and no relay had run since
            await conn.execute(text("UPDATE outbox SET created_at = now() - interval '90 seconds'"))
            waiting = await conn.scalar(text("SELECT sum(messages) FROM outbox WHERE relayed_at IS NULL"))
        relay = OutboxRelay(engine, nc)
        await relay.sample_backlog()
        assert waiting >= 3  # two positions' availability and the outcome
        assert value("stocksync_outbox_unrelayed") == waiting
        assert 90 <= value("stocksync_outbox_oldest_unrelayed_seconds") < 3600
        await relay.relay_once()
        await relay.sample_backlog()
        assert value("stocksync_outbox_unrelayed") == 0
        assert value("stocksync_outbox_oldest_unrelayed_seconds") == 0
    finally:
        await nc.close()
        await engine.dispose()


async def test_a_batch_and_a_pass_time_each_of_their_stages_and_the_wait_after_a_notify(
    fresh_database, nats_server
) -> None:
    url = fresh_database()
    location_id = unique("store")
    await prepare(url, nats_server.url, [location_id])
    engine = create_engine(url, pool_size=2)
    nc = await connect(nats_server.url)
    transaction = ("load", "apply", "write", "commit")
    relay_stages = ("read", "channels", "expect", "publish", "mark")

    def counts() -> list[float]:
        return [
            *(value("stocksync_transaction_stage_seconds_count", stage=s) for s in transaction),
            *(value("stocksync_relay_stage_seconds_count", stage=s) for s in relay_stages),
            value("stocksync_relay_wake_seconds_count"),
        ]

    try:
        before = counts()
        await LedgerService(engine).apply([receipt(location_id, {"SKU-A": 5})])
        relay = OutboxRelay(engine, nc)
        relay._notified()  # as the committing transaction's NOTIFY would, then a second before the pass
        relay._notified()
        assert await relay.relay_once() >= 2
        assert await relay.relay_once() == 0  # nothing left: read, no other stage; no NOTIFY since
        after = counts()
        assert [b - a for a, b in zip(before, after, strict=True)] == [1] * 4 + [2, 1, 1, 1, 1] + [1]
    finally:
        await nc.close()
        await engine.dispose()


async def test_consumer_lag_is_what_jetstream_counts_pending_and_unacknowledged(
    fresh_database, nats_server_factory
) -> None:
    server = nats_server_factory()  # its own stream: no other test's messages in the counts
    location_id = unique("store")
    await prepare(fresh_database(), server.url, [location_id])

    def lag() -> tuple[float, float]:
        labels = {"consumer": WORKER_CONSUMER}
        return value("stocksync_consumer_pending", **labels), value(
            "stocksync_consumer_ack_pending", **labels
        )

    async with jetstream(server.url) as (nc, js):
        await publish_events(js, [receipt(location_id, {"SKU-A": 1}) for _ in range(7)])
        worker = EventWorker(nc, LedgerService(create_engine("postgresql://unused@127.0.0.1:1/x")))

        async def sampled(expected: tuple[int, int]) -> bool:
            await worker.sample_lag()
            return lag() == expected

        await wait_until(lambda: sampled((7, 0)), what="7 pending, none delivered")
        sub = await js.pull_subscribe_bind(WORKER_CONSUMER, IN_STREAM)
        assert len(await sub.fetch(3, timeout=5)) == 3  # delivered, never acknowledged
        await wait_until(lambda: sampled((4, 3)), what="4 pending, 3 unacknowledged")


async def test_the_reservation_gauges_count_held_expiring_and_overdue(fresh_database) -> None:
    url = fresh_database()
    await migrate_database_async(url)
    engine = create_engine(url, pool_size=2)
    clock = ManualClock()
    ledger = LedgerService(engine, clock=clock)
    location_id = unique("store")
    try:
        await upsert_locations(engine, [store(location_id)])
        await ledger.apply([receipt(location_id, {"SKU-A": 10})])
        ttls = (30, 50, 600, 7200)  # two expire within the minute; none is due yet
        await ledger.apply([reserve(location_id, {"SKU-A": 1}, ttl_seconds=ttl) for ttl in ttls])
        sweeper = ExpirySweeper(engine, ledger)
        await sweeper.sample_gauges()
        gauges = ("stocksync_reservations_expiring", "stocksync_reservations_overdue")
        assert value("stocksync_reservations", status="held") == 4
        assert [value(name) for name in gauges] == [2, 0]
        clock.advance(seconds=600)  # the sweeper has not run: three are due (the third just now)
        await sweeper.sample_gauges()
        assert [value(name) for name in gauges] == [3, 3]
    finally:
        await engine.dispose()


async def test_serve_lets_its_metrics_port_go_even_when_cancelled(migrated_database_url: str) -> None:
    """An in-process `serve` (the tests run many) cancelled, not signalled, while a part is slow to stop (a
    worker still waiting for its NATS): the next may take the port."""
    port, no_nats = free_port(), f"nats://127.0.0.1:{free_port()}"
    settings = Settings(database_url=migrated_database_url, nats_url=no_nats, metrics_port=port)
    task = asyncio.create_task(serve(settings, ("worker",)))
    try:
        scraped = await wait_until(lambda: asyncio.to_thread(_metrics_text, port), what="/metrics answers")
        assert 'stocksync_roles{role="worker"} 1.0' in scraped
    finally:
        await cancel_and_wait(task)
        for signum in (signal.SIGINT, signal.SIGTERM):  # serve leaves its handlers when cancelled
            asyncio.get_running_loop().remove_signal_handler(signum)
    with socket.socket() as again:  # as the next listener binds (a scrape's TIME_WAIT does not count)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def _metrics_text(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
