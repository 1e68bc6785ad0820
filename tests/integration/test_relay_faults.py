"""The outbox relay's own faults: a poisoned availability bucket, a bucket it cannot open while it holds the
leader lock, and a leader whose lock session dies under it (spec section 3: one relay publishes at a time,
each position's versions in order).

Everything runs against real PostgreSQL and a nats-server of the test's own; the relays run as tasks of this
event loop, each with its own engine and NATS client, as separate processes would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import create_engine
from stocksync.adapters.outbox import LEADER_LOCK
from stocksync.aio import cancel_and_wait
from stocksync.messaging.relay import OutboxRelay
from stocksync.messaging.topology import migrate_topology
from stocksync.wire import AVAILABILITY_BUCKET, OUT_STREAM, availability_subject
from stocksync_client.connection import connect
from tests.support import NatsServer
from tests.support_ledger import receipt, unique
from tests.support_nats import (
    decode_availability,
    fetch,
    in_process,
    jetstream,
    out_of_order,
    outbox_messages,
    positions,
    prepare,
    publish_events,
    read_stream,
    unrelayed,
    versions_in_stream_order,
    wait_until,
)

_LOCK_HOLDERS = (
    "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class CountingRelay(OutboxRelay):
    """The relay as it is, counting the passes it starts (a pass is what only a leader does)."""

    passes = 0

    async def relay_once(self, mark_later: bool = False) -> int:
        self.passes += 1
        return await super().relay_once(mark_later)


@dataclass
class Running:
    relay: CountingRelay
    task: asyncio.Task
    stop: asyncio.Event
    engine: AsyncEngine

    async def halt(self) -> None:
        """Stop its run loop; its engine (and pool) stays until the test ends, as a live process's would."""
        self.stop.set()
        await asyncio.wait({self.task}, timeout=60)
        await cancel_and_wait(self.task)


@asynccontextmanager
async def relays(database_url: str, nats_url: str, n: int) -> AsyncIterator[list[Running]]:
    running: list[Running] = []
    clients = []
    try:
        for _ in range(n):
            engine = create_engine(database_url, pool_size=5)
            nc = await connect(nats_url, name="stocksync-relay")
            clients.append(nc)
            stop = asyncio.Event()
            relay = CountingRelay(engine, nc, poll_s=0.2)
            running.append(Running(relay, asyncio.create_task(relay.run(stop)), stop, engine))
        yield running
        for part in running:
            assert part.stop.is_set() or not part.task.done(), f"a relay stopped: {part.task.exception()!r}"
    finally:
        for part in running:
            await part.halt()
            await part.engine.dispose()
        for nc in clients:
            await nc.close()


async def lock_holders(database_url: str) -> list[int]:
    return [r["pid"] for r in await fetch(database_url, _LOCK_HOLDERS, LEADER_LOCK)]


async def bucket_body(kv: KeyValue, key: str):
    try:
        return decode_availability((await kv.get(key)).value)
    except (KeyNotFoundError, ValueError):  # not there yet, or still the garbage
        return None


def malformed_seen() -> float:
    return REGISTRY.get_sample_value("stocksync_bucket_entries_malformed_total") or 0.0


@pytest.fixture
def stack(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> Iterator[tuple[str, str]]:
    yield fresh_database(), nats_server_factory().url


# --- a poisoned bucket -------------------------------------------------------------------------------


async def test_a_malformed_entry_is_overwritten_with_the_ledger_and_never_stops_the_relay(
    stack: tuple[str, str],
) -> None:
    database_url, nats_url = stack
    loc, poisoned_sku, other_sku = unique("store"), unique("SKU"), unique("SKU")
    poisoned, other = f"{loc}.{poisoned_sku}", f"{loc}.{other_sku}"
    await prepare(database_url, nats_url, [loc])
    garbage = [
        b"not json",
        b'{"on_hand": 3}',
        b'{"version": "7"}',
        b"[1, 2]",
        b'{"version": 1e400}',
        b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ]
    before = malformed_seen()

    async with jetstream(nats_url) as (_, js), in_process(database_url, nats_url) as running:
        kv = await js.key_value(AVAILABILITY_BUCKET)
        for version, bad in enumerate(garbage, start=1):
            await kv.put(poisoned, bad)  # by hand, before the change the relay must write over it
            # and on the out stream, where the relay reads what it compares with (`NewestOnly`)
            await js.publish(availability_subject(loc, poisoned_sku), bad)
            await publish_events(js, [receipt(loc, {poisoned_sku: 1, other_sku: 1}, at=version)])
            for key in (other, poisoned):
                body = await wait_until(
                    lambda key=key, version=version: _at_version(kv, key, version),
                    what=f"{key} at version {version} over {bad!r}",
                )
                assert (body.on_hand, body.available, body.version) == (version, version, version)
            running.assert_running()

    assert malformed_seen() - before == len(garbage)  # each one seen, none taken for a version


async def _at_version(kv: KeyValue, key: str, version: int):
    body = await bucket_body(kv, key)
    return body if body is not None and body.version == version else None


# --- the bucket missing while it holds the lock ------------------------------------------------------


async def test_a_relay_that_cannot_open_the_bucket_lets_the_lock_go_and_another_relay_takes_the_lead(
    stack: tuple[str, str],
) -> None:
    database_url, nats_url = stack
    loc, sku = unique("store"), unique("SKU")
    await prepare(database_url, nats_url, [loc])

    async with jetstream(nats_url) as (_, js):
        await js.delete_stream(f"KV_{AVAILABILITY_BUCKET}")  # as if an operator removed it
        async with relays(database_url, nats_url, 1) as (a,):
            opened = 0
            stream_info = a.relay.js.stream_info

            async def counted(name: str, *args, **kwargs):
                nonlocal opened
                opened += name == f"KV_{AVAILABILITY_BUCKET}"
                return await stream_info(name, *args, **kwargs)

            a.relay.js.stream_info = counted  # type: ignore[method-assign]
            await wait_until(lambda: _true(opened >= 2), what="relay A tried to lead twice")
            await a.halt()  # its pool keeps whatever connections it returned
            assert await lock_holders(database_url) == []

            await migrate_topology(nats_url)  # the bucket back
            async with (
                relays(database_url, nats_url, 1) as (b,),
                in_process(database_url, nats_url, roles=("worker",)),
            ):
                await publish_events(js, [receipt(loc, {sku: 4})])
                kv = await js.key_value(AVAILABILITY_BUCKET)
                key = f"{loc}.{sku}"
                body = await wait_until(lambda: _at_version(kv, key, 1), what="relay B leading")
                await wait_until(lambda: _is_zero(unrelayed(database_url)), what="the outbox relayed")
                assert body.on_hand == 4 and b.relay.passes > 0 and a.relay.passes == 0


async def _true(value: bool) -> bool:
    return value


async def _is_zero(counted) -> bool:
    return (await counted) == 0


# --- the leader's lock session killed ----------------------------------------------------------------


async def test_a_leader_whose_lock_session_is_killed_stops_and_one_relay_leads_on_in_version_order(
    stack: tuple[str, str],
) -> None:
    database_url, nats_url = stack
    rng = random.Random(15)
    locations = [unique("store") for _ in range(2)]
    skus = [unique("SKU") for _ in range(3)]
    await prepare(database_url, nats_url, locations)
    published: list = []
    switched = asyncio.Event()

    async def publisher(js) -> None:
        """Receipts before, during and after the switch of leader."""
        while not switched.is_set() or len(published) < 600:
            chunk = [
                receipt(rng.choice(locations), {sku: rng.randint(1, 9) for sku in rng.sample(skus, 2)})
                for _ in range(10)
            ]
            await publish_events(js, chunk)
            published.extend(chunk)
            await asyncio.sleep(0.02)

    async with (
        jetstream(nats_url) as (_, js),
        in_process(database_url, nats_url, roles=("worker",)),
        relays(database_url, nats_url, 2) as both,
    ):
        publishing = asyncio.create_task(publisher(js))
        try:
            old = await wait_until(lambda: _leader(both), what="a relay leading")
            new = next(part for part in both if part is not old)
            await wait_until(lambda: _true(old.relay.passes >= 20), what="the first leader passing")
            (pid,) = await lock_holders(database_url)
            await fetch(database_url, "SELECT pg_terminate_backend($1)", pid)

            await wait_until(lambda: _true(not old.relay.leading), what="the old leader stopping")
            stopped_at = old.relay.passes
            taken_at = await wait_until(lambda: _passes_if_leading(new), what="the other relay leading")
            await wait_until(lambda: _true(new.relay.passes >= taken_at + 20), what="the new leader on")
            assert old.relay.passes == stopped_at  # not one pass since it stopped
            assert [part.relay.leading for part in both] == [part is new for part in both]
            assert len(await lock_holders(database_url)) == 1
            switched.set()
            await publishing
        finally:
            publishing.cancel()
        await wait_until(lambda: _processed_and_relayed(database_url, len(published)), what="all relayed")
        seen = versions_in_stream_order(await read_stream(js, OUT_STREAM, "stocksync.out.availability.>"))

    assert out_of_order(seen) == {}
    written = await availability_in_the_outbox(database_url)
    assert seen.keys() == written.keys()  # every position the ledger changed, none missing
    # conflation (spec section 3): versions may skip, and each one published is one the ledger wrote
    assert {key: set(versions) - set(written[key]) for key, versions in seen.items()} == {
        key: set() for key in seen
    }
    ledger = await positions(database_url, locations)
    assert {key: versions[-1] for key, versions in seen.items()} == {
        key: n["version"] for key, n in ledger.items()
    }


async def availability_in_the_outbox(database_url: str) -> dict[tuple[str, str], list[int]]:
    """The versions each position's availability rows carry, in commit order (a batch writes one per position,
    its last version, so they need not be consecutive)."""
    written: dict[tuple[str, str], list[int]] = {}
    for message in await outbox_messages(database_url):
        if message.kv_key is not None:
            location_id, _, sku = message.kv_key.partition(".")
            written.setdefault((location_id, sku), []).append(message.version)
    return written


async def _leader(both: list[Running]) -> Running | None:
    leading = [part for part in both if part.relay.passes > 0]
    return leading[0] if len(leading) == 1 else None


async def _passes_if_leading(part: Running) -> int | None:
    return part.relay.passes if part.relay.leading and part.relay.passes > 0 else None


async def _processed_and_relayed(database_url: str, n: int) -> bool:
    (row,) = await fetch(database_url, "SELECT count(*) AS n FROM processed_events")
    return row["n"] == n and await unrelayed(database_url) == 0


# --- what the relay reports -----------------------------------------------------------------------------


async def test_the_unrelayed_gauge_is_the_whole_backlog_not_one_pass(stack: tuple[str, str]) -> None:
    """Every row still waiting, however many passes it takes (it was once the last pass's batch: 0 as soon
    as a pass found nothing, whatever piled up behind a relay that could not lead)."""
    database_url, nats_url = stack
    await prepare(database_url, nats_url, [])
    row = "INSERT INTO outbox (subject, msg_id, payload) VALUES ('stocksync.out.test', $1, '\\x00')"
    for _ in range(3):
        await fetch(database_url, row, unique("msg"))
    engine = create_engine(database_url, pool_size=1)
    try:
        async with jetstream(nats_url) as (nc, js):
            relay = OutboxRelay(engine, nc, batch=2)
            found = []
            for _ in range(3):
                await relay.sample_backlog()
                found.append(REGISTRY.get_sample_value("stocksync_outbox_unrelayed"))
                await relay.relay_once()
    finally:
        await engine.dispose()
    assert found == [3, 1, 0]  # all three, what the first batch of two left, none
