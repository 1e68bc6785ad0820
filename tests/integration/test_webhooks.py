"""Webhooks (issue 12): out-stream messages POSTed, signed, in order, to a real local receiver that fails,
stalls and restarts; a receiver that never answers is given up after the configured time, and the next
message goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import nats

from stocksync.adapters.database import create_engine
from stocksync.adapters.webhooks import deliveries, put_webhook
from stocksync.aio import cancel_and_wait
from stocksync.domain.webhooks import SIGNATURE_HEADER, Webhook, signed_by
from stocksync.embedded.processes import free_port
from stocksync.messaging.webhooks import CONSUMER_PREFIX, WebhookDeliverer
from stocksync.wire import OUT_STREAM
from tests.support_ledger import receipt, sale, unique
from tests.support_nats import (  # noqa: F401  (stack: a fixture)
    Stack,
    _no_service_process_left_running,
    decode_availability,
    in_process,
    jetstream,
    prepare,
    publish_events,
    read_stream,
    stack,
    versions_in_stream_order,
    wait_until,
)

SECRET = "s3cret-of-the-erp-connector"


@dataclass
class Receiver:
    """A plain HTTP/1.1 server on a loopback port: answers ``plan`` in turn (an int status, or "stall"), then
    200; keeps every request it answered 2xx, with its headers."""

    port: int
    plan: list[int | str] = field(default_factory=list)
    accepted: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    requests: int = 0
    server: asyncio.Server | None = None
    open_connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.open_connections):  # Python 3.11's Server cannot close its clients itself
            writer.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stock"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = {
                    k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                step = self.plan.pop(0) if self.plan else 200
                if step == "stall":
                    await asyncio.sleep(3)  # past the deliverer's timeout: it gives up on this attempt
                    step = 200
                elif step == 200:
                    self.accepted.append((headers, body))
                writer.write(f"HTTP/1.1 {step} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()


@contextlib.asynccontextmanager
async def delivering(stack: Stack, give_up_s: float) -> AsyncIterator[None]:
    engine = create_engine(stack.database_url, pool_size=2)
    nc = await nats.connect(stack.nats_url)
    deliverer = WebhookDeliverer(
        nc, engine, give_up_after=timedelta(seconds=give_up_s), timeout_s=0.5, refresh_s=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait([task], timeout=10)
        await cancel_and_wait(task)
        await nc.close()
        await engine.dispose()


async def define(stack: Stack, hook: Webhook) -> None:
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        await put_webhook(engine, hook)
    finally:
        await engine.dispose()
    async with jetstream(stack.nats_url) as (_, js):  # deliveries start once its consumer exists
        await wait_until(
            lambda: js.consumer_info(OUT_STREAM, CONSUMER_PREFIX + hook.webhook_id), what="consumer"
        )


async def test_deliveries_are_signed_in_order_and_survive_a_receiver_that_fails_stalls_and_restarts(
    stack: Stack,
) -> None:
    loc, a, b = unique("store"), unique("SKU"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc])
    receiver = Receiver(free_port(), plan=[500, 503, "stall", 500])
    await receiver.start()
    hook = Webhook(
        webhook_id="erp", url=receiver.url, subjects=(f"stocksync.out.availability.{loc}.>",), secret=SECRET
    )

    async with in_process(stack.database_url, stack.nats_url), delivering(stack, give_up_s=600):
        await define(stack, hook)
        async with jetstream(stack.nats_url) as (_, js):
            await publish_events(js, [receipt(loc, {a: 100, b: 100})])
            await publish_events(js, [sale(loc, {a: 1}, at=i) for i in range(1, 6)])
            await wait_until(lambda: _true(len(receiver.accepted) >= 3), what="some delivered")
            await receiver.stop()  # the receiver restarts while sales go on
            await publish_events(js, [sale(loc, {a: 1, b: 1}, at=i) for i in range(6, 11)])
            await asyncio.sleep(1.5)
            await receiver.start()
            await wait_until(
                lambda: _true(_versions(receiver).get(a, [])[-1:] == [11]), what="a at version 11"
            )
            await wait_until(lambda: _true(_versions(receiver).get(b, [])[-1:] == [6]), what="b at version 6")
            msgs = await read_stream(js, OUT_STREAM, f"stocksync.out.availability.{loc}.>")
            stored = {sku: versions for (_, sku), versions in versions_in_stream_order(msgs).items()}

    assert all(
        signed_by(SECRET, headers[SIGNATURE_HEADER.lower()], body) for headers, body in receiver.accepted
    )
    assert not signed_by("another-secret-entirely", *_first_signature(receiver))
    seen = _versions(receiver)
    assert seen == stored  # every message the stream holds for it, once, in its order (repeats dropped)
    assert (seen[a][-1], seen[b][-1]) == (11, 6)
    assert receiver.requests > len(receiver.accepted)  # the failures were tried again
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        log = await deliveries(engine, "erp", 100)
    finally:
        await engine.dispose()
    assert {d.outcome for d in log} == {"delivered"}
    assert max(d.attempts for d in log) >= 4  # 500, 503, a stall, 500, then 200


async def test_a_receiver_that_never_answers_is_given_up_and_the_next_message_goes_on(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc])
    dead = Webhook(
        webhook_id="gone",
        url=f"http://127.0.0.1:{free_port()}/x",
        subjects=("stocksync.out.>",),
        secret=SECRET,
    )

    async with in_process(stack.database_url, stack.nats_url), delivering(stack, give_up_s=1.0):
        await define(stack, dead)
        async with jetstream(stack.nats_url) as (_, js):
            await publish_events(js, [receipt(loc, {sku: 5}), sale(loc, {sku: 1}, at=1)])
        engine = create_engine(stack.database_url, pool_size=1)
        try:
            log = await wait_until(
                lambda: _at_least(deliveries(engine, "gone", 100), 3), what="three given up"
            )
        finally:
            await engine.dispose()

    assert {d.outcome for d in log} == {"gave_up"}
    assert all(d.attempts >= 2 and d.last_error for d in log)
    assert [d.stream_sequence for d in log] == sorted((d.stream_sequence for d in log), reverse=True)


def _versions(receiver: Receiver) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    ids: set[str] = set()
    for headers, body in receiver.accepted:
        if headers["stocksync-message-id"] in ids:
            continue  # a repeat, dropped by its id as a receiver should
        ids.add(headers["stocksync-message-id"])
        position = decode_availability(body)
        seen.setdefault(position.sku, []).append(position.version)
    return seen


def _first_signature(receiver: Receiver) -> tuple[str, bytes]:
    headers, body = receiver.accepted[0]
    return headers[SIGNATURE_HEADER.lower()], body


async def _true(value: bool) -> bool:
    return value


async def _at_least(found, n: int):
    items = await found
    return items if len(items) >= n else None
