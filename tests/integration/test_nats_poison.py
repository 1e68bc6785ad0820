"""Poison inputs to the event worker (issue 15, points 1, 2 and 5): a body nested too deep, a body whose dead
letter would not fit the DLQ, a database pool exhausted. None may end the worker or the serve process, none may
hold up the good events fetched with it, and a passing fault is never acknowledged.

Each test has a nats-server and a database of its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from stocksync.adapters.database import async_url
from stocksync.domain.events import encode
from stocksync.embedded.processes import free_port
from stocksync.messaging import worker as worker_module
from stocksync.messaging.worker import EventWorker
from stocksync.service.ledger_service import LedgerService
from stocksync.wire import DLQ_STREAM, IN_STREAM, WORKER_CONSUMER, DeadLetter
from stocksync_client.connection import connect
from tests.support import NatsServer
from tests.support_ledger import receipt, unique
from tests.support_nats import (
    ServiceProcess,
    consumer_settled,
    in_process,
    jetstream,
    movements_per_event,
    outcomes,
    prepare,
    publish_events,
    read_stream,
    set_ack_wait,
    stop_service_processes,
    wait_until,
)

DLQ_LIMIT = 512 * 1024


@pytest.fixture(autouse=True)
def _no_service_process_left_running() -> Iterator[None]:
    yield
    stop_service_processes()


def deep_sale(location_id: str, sku: str, depth: int = 1_000) -> bytes:
    """A valid sale envelope with ``depth`` levels of nested arrays in an extra field (about 2 KB)."""
    body = msgspec.json.decode(encode(receipt(location_id, {sku: 1})))
    body["type"] = "sale"
    return msgspec.json.encode(body)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


async def dead_letters(js) -> list[DeadLetter]:
    return [msgspec.json.decode(m.data, type=DeadLetter) for m in await read_stream(js, DLQ_STREAM, ">")]


async def _all_applied(database_url: str, locations: list[str], events: list) -> bool:
    return await outcomes(database_url, locations) == {e.event_id: "applied" for e in events}


# --- 1. nested too deep --------------------------------------------------------------------------------


async def test_a_body_nested_too_deep_is_dead_lettered_and_the_serve_process_keeps_serving(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats.url, [loc])
    port = free_port()
    service = ServiceProcess(
        ["api", "worker", "relay", "sweeper"], database_url, nats.url, tmp_path / "s.log"
    )
    service.env["STOCKSYNC_HTTP_PORT"] = str(port)
    live = f"http://127.0.0.1:{port}/health/live"
    before, after = [receipt(loc, {sku: 1}, at=n) for n in range(3)], [receipt(loc, {sku: 2}, at=9)]

    async def api_answers() -> bool:
        async with httpx.AsyncClient() as client:
            return (await client.get(live, timeout=2)).status_code == 200

    async def settled(js, events: list) -> str | None:
        if not service.alive:
            return "died"
        letters = await dead_letters(js)
        done = letters and await _all_applied(database_url, [loc], events)
        return "settled" if done and await consumer_settled(js) else None

    async with jetstream(nats.url) as (_, js):
        service.start()
        await wait_until(api_answers, what="the API answering")
        await publish_events(js, before[:2])
        await js.publish(f"stocksync.in.{loc}.sale", deep_sale(loc, sku))
        await publish_events(js, before[2:])
        assert await wait_until(lambda: settled(js, before), what="the poison dead-lettered") == "settled", (
            service.log_tail()
        )
        await publish_events(js, after)  # the worker still takes events after the poison
        assert await wait_until(lambda: settled(js, before + after), what="the later applied") == "settled", (
            service.log_tail()
        )
        assert await api_answers()
        [letter] = await dead_letters(js)
    assert (letter.error, letter.subject) == ("too_deep", f"stocksync.in.{loc}.sale")


async def test_an_unexpected_error_decoding_or_dead_lettering_never_ends_the_worker(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], monkeypatch
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats.url, [loc])
    real_decode, real_dead_letter = worker_module.decode_inbound, EventWorker.dead_letter
    failures: Counter[str] = Counter()

    def decode(body: bytes):  # a decoder bug that only one body triggers
        if b"boom" in body:
            raise ZeroDivisionError("a bug in the decoder")
        return real_decode(body)

    async def dead_letter(self, msg, refusal):  # the first letter cannot be written (the DLQ is away)
        if not failures["dead_letter"]:
            failures["dead_letter"] += 1
            raise RuntimeError("the DLQ is away")
        await real_dead_letter(self, msg, refusal)

    monkeypatch.setattr(worker_module, "decode_inbound", decode)
    monkeypatch.setattr(EventWorker, "dead_letter", dead_letter)
    good = [receipt(loc, {sku: 1}, at=n) for n in range(4)]
    async with jetstream(nats.url) as (_, js):
        await set_ack_wait(js, 3_600.0)  # a delivery left unacknowledged would fail the test, not pass late
        await publish_events(js, good[:2])
        await js.publish(f"stocksync.in.{loc}.sale", b'{"boom": 1}')
        await publish_events(js, good[2:])
        async with in_process(database_url, nats.url, roles=("worker",)) as running:
            await wait_until(lambda: _all_applied(database_url, [loc], good), what="the good events applied")
            letters = await wait_until(lambda: dead_letters(js), what="the letter")
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            running.assert_running()
    assert [(d.error, d.body) for d in letters] == [("decode_failed", '{"boom": 1}')]
    assert "ZeroDivisionError" in letters[0].detail


# --- 2. a dead letter always fits ----------------------------------------------------------------------


async def test_a_body_whose_letter_would_pass_the_dlq_limit_is_truncated_and_holds_up_nothing(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats.url, [loc])
    good = [receipt(loc, {sku: 1}, at=n) for n in range(6)]
    control_bytes = bytes(range(1, 32)) * (100_000 // 31 + 1)
    poison = control_bytes[:100_000]  # valid UTF-8; JSON escapes each byte as \u00XX
    async with jetstream(nats.url) as (_, js):
        await set_ack_wait(js, 60.0)
        await publish_events(js, good[:3])
        ack = await js.publish(f"stocksync.in.{loc}.sale", poison, headers={"Nats-Msg-Id": "\x01" * 200})
        await publish_events(js, good[3:])
        async with in_process(database_url, nats.url, roles=("worker",)):
            await wait_until(lambda: _all_applied(database_url, [loc], good), what="the good events applied")
            msgs = await wait_until(lambda: read_stream(js, DLQ_STREAM, ">"), what="the letter")
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
        info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
        kept = await js.get_msg(IN_STREAM, ack.seq)  # the original stays in the inbound stream
    assert info.num_redelivered == 0  # delivered once each: nobody waited for ack_wait
    [letter_msg] = msgs
    assert len(letter_msg.data) < DLQ_LIMIT
    letter = msgspec.json.decode(letter_msg.data, type=DeadLetter)
    assert (letter.error, letter.stream_sequence) == ("undecodable", ack.seq)
    assert (letter.body_truncated, letter.body_bytes) == (True, 100_000)
    assert poison.startswith(letter.body.encode()) and len(letter.body) < len(poison)
    assert kept.data == poison


# --- 5. a passing fault is never acknowledged ------------------------------------------------------------


class CountingLedger(LedgerService):
    """Counts the batches that failed, so the test knows the worker tried while the pool was exhausted."""

    failed = 0

    async def apply(self, events):
        try:
            return await super().apply(events)
        except Exception:
            CountingLedger.failed += 1
            raise


async def test_a_pool_checkout_timeout_is_a_passing_fault_nothing_is_dead_lettered_or_acknowledged(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats.url, [loc])
    events = [receipt(loc, {sku: 1}, at=n) for n in range(5)]
    engine = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2)
    nc = await connect(nats.url, name="stocksync-worker")
    stop = asyncio.Event()
    worker = EventWorker(nc, CountingLedger(engine), max_backoff_s=0.2)
    task: asyncio.Task | None = None
    try:
        async with jetstream(nats.url) as (_, js):
            await set_ack_wait(js, 3_600.0)
            async with engine.connect() as held:  # the pool's only connection, held by the test
                await publish_events(js, events)  # before the worker starts: one batch
                CountingLedger.failed = 0
                task = asyncio.create_task(worker.run(stop))
                await wait_until(lambda: _true(CountingLedger.failed >= 5), what="the worker trying")
                info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
                assert (info.num_ack_pending, info.num_pending) == (len(events), 0)
                assert await dead_letters(js) == []
                assert await outcomes(database_url, [loc]) == {}
                assert not task.done()
                await held.rollback()
            await wait_until(lambda: _all_applied(database_url, [loc], events), what="all applied after")
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            assert await dead_letters(js) == []
            info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
            assert info.num_redelivered == 0
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, timeout=30)
        await nc.close()
        await engine.dispose()
    assert await movements_per_event(database_url, [loc]) == {event.event_id: 1 for event in events}


async def _true(value: bool) -> bool:
    return value
