"""Tracing (issue 12): an event's trace runs from the HTTP request or the NATS publish (``traceparent``)
through the transaction to the relay's publish, whose message carries it on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stocksync import tracing
from stocksync.adapters.database import create_engine
from stocksync.domain.events import encode
from stocksync.http.app import create_app
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger
from stocksync.wire import OUT_STREAM
from tests.support import run_sql
from tests.support_ledger import receipt, sale, unique
from tests.support_nats import (  # noqa: F401  (stack: a fixture)
    Stack,
    _no_service_process_left_running,
    in_process,
    jetstream,
    prepare,
    read_stream,
    stack,
    unrelayed,
    wait_until,
)

EXPORTED = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test only (OpenTelemetry keeps the first provider a process sets)."""
    if not getattr(tracing, "_test_provider", None):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        tracing.use(provider)
        tracing._test_provider = provider  # type: ignore[attr-defined]
    else:
        tracing.use(tracing._test_provider)  # type: ignore[attr-defined]
    EXPORTED.clear()
    try:
        yield EXPORTED
    finally:
        tracing.disable()


def traceparent(trace_id: int) -> str:
    return f"00-{trace_id:032x}-{0xB7AD6B7169203331:016x}-01"


def names_in(exported: InMemorySpanExporter, trace_id: int) -> list[str]:
    return [s.name for s in exported.get_finished_spans() if s.context.trace_id == trace_id]


async def test_a_nats_sale_is_one_trace_from_its_publish_to_the_relays_publish(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    loc, sku, trace_id = unique("store"), unique("SKU"), 0x5A1E
    await prepare(stack.database_url, stack.nats_url, [loc])
    sold = sale(loc, {sku: 1})
    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await js.publish(
            f"stocksync.in.{loc}.sale", encode(sold), headers={"traceparent": traceparent(trace_id)}
        )
        subject = f"stocksync.out.availability.{loc}.{sku}"
        (msg,) = await wait_until(lambda: read_stream(js, OUT_STREAM, subject), what="published")

    assert {"worker.batch", "ledger.transaction", "relay.publish"} <= set(names_in(spans, trace_id))
    assert f"{trace_id:032x}" in msg.headers["traceparent"]  # carried on to the channels' consumers


async def test_an_http_event_is_one_trace_from_the_request_to_the_relays_publish(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    loc, sku, trace_id = unique("store"), unique("SKU"), 0xB0D1
    await prepare(stack.database_url, stack.nats_url, [loc])
    engine = create_engine(stack.database_url, pool_size=2)
    try:
        key = await create_key(engine, "admin")
        app = create_app(engine=engine, ledger=GroupCommitLedger(engine))
        event = encode(receipt(loc, {sku: 3}))
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
            in_process(stack.database_url, stack.nats_url, roles=("relay",)),
        ):
            headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent(trace_id)}
            answer = await http.post(
                "/v1/events", content=event, headers={**headers, "content-type": "application/json"}
            )
            assert answer.json()["outcome"] == "applied", answer.text
            await wait_until(lambda: _none(unrelayed(stack.database_url)), what="relayed")
    finally:
        await engine.dispose()

    assert {"POST /v1/events", "ledger.transaction", "relay.publish"} <= set(names_in(spans, trace_id))


async def test_off_no_span_is_made_and_no_row_carries_a_trace(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc])
    before = len(EXPORTED.get_finished_spans())
    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await js.publish(
            f"stocksync.in.{loc}.sale", encode(sale(loc, {sku: 1})), headers={"traceparent": traceparent(7)}
        )
        await wait_until(
            lambda: read_stream(js, OUT_STREAM, f"stocksync.out.availability.{loc}.>"), what="published"
        )
    assert len(EXPORTED.get_finished_spans()) == before
    assert run_sql(stack.database_url, "SELECT count(*) FROM outbox WHERE traceparent IS NOT NULL") == [(0,)]


async def _none(awaitable) -> bool:
    return await awaitable == 0
