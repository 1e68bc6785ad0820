"""Passing faults on the NATS path (spec sections 2.10 and 3): a worker killed mid-stream, the database gone
for a while, the nats-server restarted. Afterwards every event is applied exactly once and the relay has
published what the ledger committed meanwhile.

Each test owns its nats-server and its database (an embedded PostgreSQL when the test stops it).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from stocksync.embedded.postgres import start_postgres
from stocksync.wire import AVAILABILITY_BUCKET, DLQ_STREAM, OUT_STREAM
from tests.support import NatsServer
from tests.support_ledger import adjust, receipt, return_, sale, unique
from tests.support_nats import (
    ReferenceLedger,
    ServiceProcess,
    consumer_settled,
    count_processed,
    decode_availability,
    in_process,
    jetstream,
    lock_waiters,
    movements_per_event,
    out_of_order,
    outcomes,
    positions,
    prepare,
    publish_events,
    publish_until_acked,
    read_stream,
    set_ack_wait,
    stop_service_processes,
    unrelayed,
    versions_in_stream_order,
    wait_until,
)


def stock_moves(rng: random.Random, locations: list[str], skus: list[str], n: int) -> list:
    """Events that commute (so any application order ends the same), each sku once per event, so every
    applied event moves exactly one movement per line."""
    makers = [
        lambda loc, lines: receipt(loc, {sku: rng.randint(1, 20) for sku in lines}),
        lambda loc, lines: sale(loc, {sku: rng.randint(1, 5) for sku in lines}),
        lambda loc, lines: return_(
            loc, {sku: 1 for sku in lines}, disposition=rng.choice(["restock", "damaged"])
        ),
        lambda loc, lines: adjust(loc, {sku: rng.choice([-2, -1, 1, 3]) for sku in lines}, reason="found"),
    ]
    return [
        rng.choice(makers)(rng.choice(locations), rng.sample(skus, rng.randint(1, len(skus))))
        for _ in range(n)
    ]


async def assert_applied_exactly_once(database_url: str, locations: list[str], events: list) -> None:
    """One processed_events row per event, all applied; one movement per line; the numbers of the model."""
    recorded = await outcomes(database_url, locations)
    assert recorded == {event.event_id: "applied" for event in events}
    moved = await movements_per_event(database_url, locations)
    assert moved == {event.event_id: len(event.lines) for event in events}
    model = ReferenceLedger(locations).apply(events)
    assert await positions(database_url, locations) == model.positions()


async def _count_is(counted, expected: int) -> bool:
    return (await counted) == expected


async def _at_least(counted, expected: int) -> bool:
    return (await counted) >= expected


async def _is_zero(counted) -> bool:
    return (await counted) == 0


@pytest.fixture(autouse=True)
def _no_service_process_left_running() -> Iterator[None]:
    yield
    stop_service_processes()


# --- the worker killed -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_worker_killed_five_times_mid_stream_applies_every_event_exactly_once(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    rng = random.Random(4)
    locations = [unique("store") for _ in range(2)]
    skus = [unique("SKU") for _ in range(4)]
    await prepare(database_url, nats.url, locations)
    worker = ServiceProcess(["worker"], database_url, nats.url, tmp_path / "worker.log")
    published: list = []
    kills_done = asyncio.Event()

    async def publisher(js) -> None:
        """A steady stream until the kills are over, and a few thousand events in all."""
        while not kills_done.is_set() or len(published) < 3_000:
            chunk = stock_moves(rng, locations, skus, 25)
            await publish_events(js, chunk)
            published.extend(chunk)
            await asyncio.sleep(0.05)

    async with jetstream(nats.url) as (_, js):
        await set_ack_wait(js, 2.0)  # what a killed worker held is redelivered within the test's budget
        worker.start()
        publishing = asyncio.create_task(publisher(js))
        try:
            for kill in range(5):
                # Mid-stream: the worker has applied events since its start, and more keep coming.
                enough = await count_processed(database_url, locations) + 100
                await wait_until(
                    lambda enough=enough: _at_least(count_processed(database_url, locations), enough),
                    what=f"progress before kill {kill + 1}",
                )
                worker.kill()
                worker.start()
            kills_done.set()
            await publishing
            await wait_until(
                lambda: _count_is(count_processed(database_url, locations), len(published)),
                what="every event recorded",
            )
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
        finally:
            publishing.cancel()
            await asyncio.to_thread(worker.stop)
        assert await read_stream(js, DLQ_STREAM, "stocksync.dlq.>") == []

    assert worker.starts == 6
    await assert_applied_exactly_once(database_url, locations, published)


# --- the database away ------------------------------------------------------------------------------------


async def test_a_batch_whose_database_connection_dies_mid_transaction_is_retried_not_dead_lettered(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> None:
    """As when PostgreSQL shuts down, restarts or fails over under a transaction: a passing fault."""
    database_url, nats = fresh_database(), nats_server_factory()
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats.url, [loc])
    stocked, sold = receipt(loc, {sku: 10}), sale(loc, {sku: 4}, at=1)

    async with jetstream(nats.url) as (_, js), in_process(database_url, nats.url, roles=("worker",)):
        await publish_events(js, [stocked])
        await wait_until(
            lambda: _count_is(count_processed(database_url, [loc]), 1), what="the receipt recorded"
        )
        holder = await asyncpg.connect(database_url)
        try:
            async with holder.transaction():  # the position locked, so the sale's transaction waits inside
                await holder.execute("SELECT 1 FROM positions WHERE location_id = $1 FOR UPDATE", loc)
                await publish_events(js, [sold])
                waiting = await wait_until(lambda: lock_waiters(database_url), what="the worker waiting")
                await holder.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", waiting
                )
        finally:
            await holder.close()
        await wait_until(lambda: consumer_settled(js), what="the consumer settled")
        assert await read_stream(js, DLQ_STREAM, "stocksync.dlq.>") == []
        await wait_until(lambda: _count_is(count_processed(database_url, [loc]), 2), what="the sale recorded")

    await assert_applied_exactly_once(database_url, [loc], [stocked, sold])


@pytest.mark.slow
async def test_the_database_stopped_for_ten_seconds_loses_nothing_doubles_nothing_and_the_relay_catches_up(
    nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    postgres = start_postgres(tmp_path / "pg")  # a server of the test's own, to stop and start again
    database_url = postgres.url
    nats = nats_server_factory()
    rng = random.Random(5)
    locations = [unique("store") for _ in range(2)]
    skus = [unique("SKU") for _ in range(3)]
    published: list = []
    back = asyncio.Event()

    async def publisher(js) -> None:
        """Events keep flowing before, during and after the outage."""
        while not back.is_set() or len(published) < 1_500:
            chunk = stock_moves(rng, locations, skus, 20)
            await publish_events(js, chunk)
            published.extend(chunk)
            await asyncio.sleep(0.05)

    try:
        await prepare(database_url, nats.url, locations)
        async with jetstream(nats.url) as (_, js), in_process(database_url, nats.url) as running:
            publishing = asyncio.create_task(publisher(js))
            try:
                await wait_until(
                    lambda: _at_least(count_processed(database_url, locations), 200), what="flowing"
                )
                await asyncio.to_thread(postgres.stop)  # fast shutdown: open transactions are cut off
                await asyncio.sleep(10)
                running.assert_running()
                postgres = await asyncio.to_thread(start_postgres, tmp_path / "pg")
                assert postgres.url == database_url
                back.set()
                await publishing
            finally:
                publishing.cancel()
            await wait_until(
                lambda: _count_is(count_processed(database_url, locations), len(published)),
                what="every event recorded",
            )
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            await wait_until(lambda: _is_zero(unrelayed(database_url)), what="the outbox relayed")
            running.assert_running()
            kv = await js.key_value(AVAILABILITY_BUCKET)
            bucket = {
                key: decode_availability((await kv.get(f"{key[0]}.{key[1]}")).value)
                for key in await positions(database_url, locations)
            }
            assert await read_stream(js, DLQ_STREAM, "stocksync.dlq.>") == []
            reported = [
                msgspec.json.decode(m.data)
                for m in await read_stream(js, OUT_STREAM, "stocksync.out.outcome.>")
            ]

        await assert_applied_exactly_once(database_url, locations, published)
        # The relay published the backlog: an outcome for every event (once, as applied) and the final numbers.
        assert sorted(body["event_id"] for body in reported if body["outcome"] == "applied") == sorted(
            event.event_id for event in published
        )
        ledger = await positions(database_url, locations)
        assert {key: a.version for key, a in bucket.items()} == {
            key: n["version"] for key, n in ledger.items()
        }
        assert {key: a.on_hand for key, a in bucket.items()} == {
            key: n["on_hand"] for key, n in ledger.items()
        }
    finally:
        await asyncio.to_thread(postgres.stop)


# --- the nats-server restarted ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_after_nats_restarts_the_worker_pulls_again_and_the_relay_publishes_again(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    rng = random.Random(7)
    locations = [unique("store")]
    skus = [unique("SKU") for _ in range(3)]
    await prepare(database_url, nats.url, locations)
    before = stock_moves(rng, locations, skus, 200)
    outages_s = [0.6, 1.3, 2.1, 2.9]  # reconnects land at different points of the worker's pull cycle
    rounds = [stock_moves(rng, locations, skus, 100) for _ in outages_s]
    applied = list(before)

    async with jetstream(nats.url) as (_, js), in_process(database_url, nats.url) as running:
        # A delivery the worker loses comes back only after ack_wait: make that far beyond the deadline, so
        # a lost one fails the test instead of passing late.
        await set_ack_wait(js, 3_600.0)
        await publish_events(js, before)
        await wait_until(
            lambda: _count_is(count_processed(database_url, locations), len(before)), what="before"
        )
        await wait_until(lambda: _is_zero(unrelayed(database_url)), what="the outbox relayed before")

        for outage_s, after in zip(outages_s, rounds, strict=True):
            await asyncio.to_thread(nats.stop)
            await asyncio.sleep(outage_s)  # the clients notice and keep trying to reconnect
            await asyncio.to_thread(nats.start)
            for event in after:
                await publish_until_acked(js, event)
            applied += after
            total = len(applied)
            await wait_until(
                lambda total=total: _count_is(count_processed(database_url, locations), total),
                what="the events published after the restart recorded",
            )
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            await wait_until(lambda: _is_zero(unrelayed(database_url)), what="the outbox relayed after")
            running.assert_running()
        reported = {
            msgspec.json.decode(m.data)["event_id"]
            for m in await read_stream(js, OUT_STREAM, "stocksync.out.outcome.>")
        }
        seen = versions_in_stream_order(await read_stream(js, OUT_STREAM, "stocksync.out.availability.>"))

    await assert_applied_exactly_once(database_url, locations, applied)
    assert {event.event_id for event in applied} == reported
    assert out_of_order(seen) == {}
    ledger = await positions(database_url, locations)
    assert {key: versions[-1] for key, versions in seen.items()} == {
        key: n["version"] for key, n in ledger.items()
    }
