"""The NATS side end to end (spec section 3): inbound events through the worker to the ledger, the outbox
relay to the out stream and the availability bucket, the DLQ, and the topology `migrate` keeps.

Each test has a nats-server and a database of its own, so stream contents and ledger rows are its alone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import msgspec
import nats
import pytest
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError
from sqlalchemy import text

from stocksync.adapters.bucket import EXPECTED_SUBJECT_SEQ, WRONG_LAST_SEQUENCE, sourced
from stocksync.adapters.database import create_engine
from stocksync.domain.events import decode_inbound, encode
from stocksync.messaging.relay import OutboxRelay
from stocksync.messaging.topology import availability_bucket, migrate_topology, streams, worker_consumer
from stocksync.service.ledger_service import LedgerService
from stocksync.wire import (
    AVAILABILITY_BUCKET,
    CHANNEL_BUCKET,
    DLQ_STREAM,
    IN_STREAM,
    MSG_ID,
    OUT_STREAM,
    WORKER_CONSUMER,
    DeadLetter,
    outcome_subject,
)
from tests.support import NatsServer, run_sql
from tests.support_ledger import adjust, cancel, collect, count, receipt, reserve, return_, sale, unique
from tests.support_nats import (  # noqa: F401  (stack: a fixture)
    ReferenceLedger,
    ServiceProcess,
    Stack,
    _no_service_process_left_running,
    consumer_settled,
    count_processed,
    decode_availability,
    in_process,
    jetstream,
    movements_per_event,
    out_of_order,
    outcomes,
    positions,
    prepare,
    processes,
    publish_events,
    read_stream,
    relay_leader,
    reservation_statuses,
    set_ack_wait,
    stack,
    stop_service_processes,
    unrelayed,
    versions_in_stream_order,
    wait_until,
    without_version,
)

# --- one event ------------------------------------------------------------------------------------------


async def test_a_sale_changes_availability_on_the_out_stream_in_the_bucket_and_reports_its_outcome(
    stack: Stack,
) -> None:
    loc, sku = unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc])
    stocked, sold = receipt(loc, {sku: 10}), sale(loc, {sku: 3}, at=1)

    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        await publish_events(js, [stocked])
        await wait_until(lambda: outcomes(stack.database_url, [loc]), what="the receipt recorded")
        await js.publish(f"stocksync.in.{loc}.sale", encode(sold), headers={"Nats-Msg-Id": sold.event_id})

        subject = f"stocksync.out.availability.{loc}.{sku}"

        async def published_version_2():
            msg = await js.get_last_msg(OUT_STREAM, subject)
            return msg if decode_availability(msg.data).version == 2 else None

        last = decode_availability((await wait_until(published_version_2, what="availability v2")).data)
        assert (last.on_hand, last.reserved, last.available, last.version) == (7, 0, 7, 2)

        kv = await js.key_value(AVAILABILITY_BUCKET)
        entry = await wait_until(lambda: _kv_version(kv, f"{loc}.{sku}", 2), what="the bucket at v2")
        assert msgspec.json.decode(entry.value)["available"] == 7

        reported = await wait_until(
            lambda: _outcome_messages(js, loc, sold.event_id), what="the sale's outcome message"
        )
        assert [(o["type"], o["outcome"], o["error"]) for o in reported] == [("sale", "applied", None)]

    assert await positions(stack.database_url, [loc]) == {
        (loc, sku): {"on_hand": 7, "reserved": 0, "damaged": 0, "safety_stock": 0, "version": 2}
    }


async def test_a_till_of_one_store_cannot_claim_the_event_id_another_store_will_use(stack: Stack) -> None:
    """Rule 10 over NATS: store A's till publishing B's future event id first blocks B's real sale neither in
    the ledger nor in STOCKSYNC_IN's de-duplication, which is stream-wide and keyed by a publisher's id."""
    store_a, store_b, sku = unique("store"), unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [store_a, store_b])
    event_id = f"{store_b}:till-1:000001"
    claimed, real = sale(store_a, {sku: 1}, event_id=event_id), sale(store_b, {sku: 3}, event_id=event_id)

    async with jetstream(stack.nats_url) as (_, js), in_process(stack.database_url, stack.nats_url):
        window = (await js.stream_info(IN_STREAM)).config.duplicate_window
        (first,) = await publish_events(js, [claimed])
        await wait_until(lambda: outcomes(stack.database_url, [store_a]), what="store A's event recorded")
        await asyncio.sleep(window)  # B's till sells later; within the window the stream would drop it
        (second,) = await publish_events(js, [real])
        await wait_until(lambda: outcomes(stack.database_url, [store_b]), what="store B's sale recorded")
        reported = await wait_until(
            lambda: _outcome_messages(js, store_b, event_id), what="store B's outcome message"
        )

    assert window == 0.1  # the least nats-server accepts (0 would mean its default, two minutes)
    assert (first.duplicate, second.duplicate) == (None, None)
    assert await outcomes(stack.database_url, [store_b]) == {event_id: "applied"}
    assert [(o["outcome"], o["error"]) for o in reported] == [("applied", None)]
    assert await positions(stack.database_url, [store_a, store_b]) == {
        (store_a, sku): {"on_hand": -1, "reserved": 0, "damaged": 0, "safety_stock": 0, "version": 1},
        (store_b, sku): {"on_hand": -3, "reserved": 0, "damaged": 0, "safety_stock": 0, "version": 1},
    }


async def _kv_version(kv, key: str, version: int):
    entry = await kv.get(key)
    return entry if decode_availability(entry.value).version == version else None


async def _outcome_messages(js, loc: str, event_id: str) -> list[dict]:
    msgs = await read_stream(js, OUT_STREAM, f"stocksync.out.outcome.{loc}")
    return [body for body in (msgspec.json.decode(m.data) for m in msgs) if body["event_id"] == event_id]


# --- poison ---------------------------------------------------------------------------------------------


async def test_poison_messages_go_to_the_dlq_acknowledged_and_the_good_ones_around_them_apply(
    stack: Stack,
) -> None:
    loc, other, sku = unique("store"), unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc, other])
    good = [receipt(loc, {sku: 5}, at=n) for n in range(3)]
    wrong_location = sale(other, {sku: 1})
    bad_qty = msgspec.json.decode(encode(sale(loc, {sku: 1})))
    bad_qty["lines"][0]["qty"] = 0
    poison = [
        (f"stocksync.in.{loc}.sale", b"{this is not json", "undecodable"),
        (f"stocksync.in.{loc}.sale", b"\xff\xfe\x00 not utf-8", "undecodable"),
        (f"stocksync.in.{loc}.sale", encode(wrong_location), "subject_mismatch"),
        (f"stocksync.in.{loc}.receipt", encode(sale(loc, {sku: 1})), "subject_mismatch"),
        (f"stocksync.in.{loc}.sale", msgspec.json.encode(bad_qty), "invalid_event"),
    ]

    async with jetstream(stack.nats_url) as (_, js):
        await js.publish(f"stocksync.in.{loc}.receipt", encode(good[0]))
        for (subject, body, _), event in zip(poison, [good[1], None, good[2], None, None], strict=True):
            await js.publish(subject, body)
            if event is not None:
                await js.publish(f"stocksync.in.{loc}.receipt", encode(event))

        async with in_process(stack.database_url, stack.nats_url, roles=("worker",)):
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            letters = await wait_until(
                lambda: read_stream(js, DLQ_STREAM, "stocksync.dlq.>"), what="dead letters"
            )

        info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
        assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)

    assert await outcomes(stack.database_url, [loc, other]) == {e.event_id: "applied" for e in good}
    assert await positions(stack.database_url, [loc, other]) == {
        (loc, sku): {"on_hand": 15, "reserved": 0, "damaged": 0, "safety_stock": 0, "version": 3}
    }
    assert [m.subject for m in letters] == [f"stocksync.dlq.{loc}"] * len(poison)
    dead = [msgspec.json.decode(m.data, type=DeadLetter) for m in letters]
    assert [(d.subject, d.error) for d in dead] == [(subject, code) for subject, _, code in poison]
    assert all(d.detail for d in dead)
    assert dead[0].body == "{this is not json" and dead[0].body_encoding == "utf-8"
    assert dead[1].body_encoding == "base64"
    assert base64.b64decode(dead[1].body) == poison[1][1]
    assert decode_inbound(dead[2].body) == wrong_location


async def test_a_batch_failing_for_one_event_is_split_the_others_apply_and_that_one_is_dead_lettered(
    stack: Stack,
) -> None:
    loc, sku, refused_sku = unique("store"), unique("SKU"), unique("BROKEN")
    await prepare(stack.database_url, stack.nats_url, [loc])
    # A valid event the database will not store: a trigger of this test's own database refuses one sku.
    run_sql(
        stack.database_url,
        "CREATE FUNCTION refuse_one_sku() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.sku = '{refused_sku}' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_one_sku BEFORE INSERT ON movements FOR EACH ROW EXECUTE FUNCTION refuse_one_sku()",
    )
    events = [receipt(loc, {sku: 1}, at=n) for n in range(6)]
    broken = receipt(loc, {refused_sku: 1}, at=3)
    events.insert(3, broken)
    async with jetstream(stack.nats_url) as (_, js):
        for event in events:  # published before the worker starts, so they arrive as one batch
            await js.publish(
                f"stocksync.in.{loc}.receipt", encode(event), headers={"Nats-Msg-Id": event.event_id}
            )
        async with in_process(stack.database_url, stack.nats_url, roles=("worker",)):
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            letters = await wait_until(
                lambda: read_stream(js, DLQ_STREAM, "stocksync.dlq.>"), what="dead letters"
            )
    good = [event for event in events if event is not broken]
    assert await outcomes(stack.database_url, [loc]) == {e.event_id: "applied" for e in good}
    assert await positions(stack.database_url, [loc]) == {
        (loc, sku): {"on_hand": 6, "reserved": 0, "damaged": 0, "safety_stock": 0, "version": 6}
    }
    [letter] = [msgspec.json.decode(m.data, type=DeadLetter) for m in letters]
    assert (letter.error, decode_inbound(letter.body)) == ("apply_failed", broken)
    assert "refused by the test" in letter.detail


# --- topology -------------------------------------------------------------------------------------------


async def _topology(js) -> dict:
    streams = {name: (await js.stream_info(name)) for name in (IN_STREAM, OUT_STREAM, DLQ_STREAM)}
    consumer = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
    bucket = await js.stream_info(f"KV_{AVAILABILITY_BUCKET}")
    return {
        "configs": {name: info.config for name, info in streams.items()},
        "created": {name: info.created for name, info in streams.items()},
        "consumer": (consumer.config, consumer.created),
        "bucket": (bucket.config, bucket.created),
    }


def _entry(subject: str, key: str, version: int) -> SimpleNamespace:
    """A versioned row as the relay publishes it (an availability row, or a channel's sum)."""
    payload = msgspec.json.encode({"version": version, "on_hand": version})
    msg_id = f"{key}:{version}"
    return SimpleNamespace(subject=subject, msg_id=msg_id, payload=payload, kv_key=key, version=version)


async def _out_versions(js, subject: str) -> list[int]:
    """Every version the out stream holds on ``subject``, in stream order."""
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    versions = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            versions.append(msgspec.json.decode(msg.data)["version"])
    except nats.errors.TimeoutError:
        return versions
    finally:
        await sub.unsubscribe()


async def test_the_out_stream_never_takes_an_older_version_whoever_published_meanwhile(stack: Stack) -> None:
    """A deposed leader's late publish is refused, on a subject the new leader wrote since it last did and
    on one it had never written; the bucket takes each entry from the out stream by sourcing."""
    await migrate_topology(stack.nats_url)
    loc = unique("store")
    first, second = (f"{loc}.{unique('SKU')}" for _ in range(2))
    subject = {key: f"stocksync.out.availability.{key}" for key in (first, second)}
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with jetstream(stack.nats_url) as (nc, js):
            old, new = OutboxRelay(engine, nc), OutboxRelay(engine, nc)
            await old._publish([_entry(subject[first], first, 1)])  # a first version: published unread at 0
            await old._publish([_entry(subject[first], first, 2)])  # its own last sequence: no read
            await new._publish([_entry(subject[first], first, 5), _entry(subject[second], second, 4)])
            # the deposed leader, with what it knew: refused, read again, 5 is there, so 3 is not sent
            await old._publish([_entry(subject[first], first, 3)])
            await old._publish([_entry(subject[second], second, 2)])  # never seen: read, 4 is there
            assert await _out_versions(js, subject[first]) == [1, 2, 5]
            assert await _out_versions(js, subject[second]) == [4]
            assert await sourced(js, AVAILABILITY_BUCKET)
            kv = await js.key_value(AVAILABILITY_BUCKET)
            held = [msgspec.json.decode((await kv.get(k)).value)["version"] for k in (first, second)]
            assert held == [5, 4]
    finally:
        await engine.dispose()


async def test_a_pass_marks_the_rows_the_pass_before_published_as_it_reads_and_never_reads_them_again(
    fresh_database, nats_server
) -> None:
    url = fresh_database()
    loc = unique("store")
    await prepare(url, nats_server.url, [loc])
    engine = create_engine(url, pool_size=2)
    ledger = LedgerService(engine)

    async def unrelayed() -> list[tuple[int, int]]:
        """The unrelayed rows: (id, how many messages)."""
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT id, messages FROM outbox WHERE relayed_at IS NULL ORDER BY id")
            )
            return [tuple(row) for row in found]

    try:
        async with jetstream(nats_server.url) as (nc, js):
            relay = OutboxRelay(engine, nc)
            await ledger.apply([receipt(loc, {"SKU-A": 5})])
            first = await unrelayed()
            assert await relay.relay_once(mark_later=True) == sum(n for _, n in first) >= 2
            assert await unrelayed() == first  # published, not yet marked
            await ledger.apply([receipt(loc, {"SKU-A": 1})])
            second = [i for i in await unrelayed() if i not in first]
            # the first pass's rows not again
            assert await relay.relay_once(mark_later=True) == sum(n for _, n in second)
            assert await unrelayed() == second
            assert await relay.relay_once(mark_later=True) == 0
            assert await unrelayed() == []
            outcomes = await read_stream(js, OUT_STREAM, outcome_subject(loc))  # the server is shared
            assert len(outcomes) == 2  # each event's outcome published once
    finally:
        await engine.dispose()


async def test_a_pass_reads_its_limit_in_messages_and_at_least_one_bundle(
    fresh_database, nats_server
) -> None:
    """Three transactions of two messages each (availability and outcome), one bundle row each: a pass
    limited to three messages reads two bundles (the second starts within the limit), then the third."""
    url = fresh_database()
    loc = unique("store")
    await prepare(url, nats_server.url, [loc])
    engine = create_engine(url, pool_size=2)
    ledger = LedgerService(engine)
    try:
        for sku in ("SKU-A", "SKU-B", "SKU-C"):
            await ledger.apply([receipt(loc, {sku: 1})])
        async with jetstream(nats_server.url) as (nc, js):
            relay = OutboxRelay(engine, nc, batch=3, catch_up_batch=3)
            assert await relay.relay_once() == 4
            assert relay._behind  # the limit cut the read: the next pass follows at once
            assert await relay.relay_once() == 2
            assert not relay._behind
            assert await relay.relay_once() == 0
            availability = await read_stream(js, OUT_STREAM, f"stocksync.out.availability.{loc}.*")
            assert sorted(m.subject.rsplit(".", 1)[1] for m in availability) == ["SKU-A", "SKU-B", "SKU-C"]
    finally:
        await engine.dispose()


async def test_a_first_version_is_sent_unread_and_where_its_subject_holds_one_refused_read_and_skipped(
    stack: Stack,
) -> None:
    """Version 1 expects an empty subject without reading it: stored where it is; where another relay stored
    version 1 or a repair a newer one, refused, then read, and not sent again."""
    await migrate_topology(stack.nats_url)
    loc = unique("store")
    empty, same, newer = (f"{loc}.{unique('SKU')}" for _ in range(3))
    subject = {key: f"stocksync.out.availability.{key}" for key in (empty, same, newer)}
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with jetstream(stack.nats_url) as (nc, js):
            await OutboxRelay(engine, nc)._publish(
                [_entry(subject[same], same, 1), _entry(subject[newer], newer, 3)]
            )
            relay, read = OutboxRelay(engine, nc), []
            last = relay._newest._last

            async def reading(subject: str) -> tuple[int, int]:
                read.append(subject)
                return await last(subject)

            relay._newest._last = reading
            await relay._publish([_entry(subject[key], key, 1) for key in (empty, same, newer)])
            assert sorted(read) == sorted([subject[same], subject[newer]])  # only the two refused
            assert [await _out_versions(js, subject[key]) for key in (empty, same, newer)] == [[1], [1], [3]]
    finally:
        await engine.dispose()


async def test_a_pass_sent_again_after_its_acknowledgement_was_lost_stores_the_entry_once(
    stack: Stack,
) -> None:
    """nats-server checks the expected sequence before the message id: the stored entry sent again with the
    expectation it had is refused (not reported a duplicate), and the read that follows finds it there."""
    await migrate_topology(stack.nats_url)
    key = f"{unique('web')}.{unique('SKU')}"
    subject = f"stocksync.out.channel.{key}"
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with jetstream(stack.nats_url) as (nc, js):
            relay = OutboxRelay(engine, nc)
            await relay._publish([_entry(subject, key, 1)])
            first = (await js.get_last_msg(OUT_STREAM, subject)).seq
            lost = _entry(subject, key, 2)  # stored, as if its acknowledgement never came back
            await js.publish(subject, lost.payload, headers={MSG_ID: lost.msg_id})
            with pytest.raises(APIError) as refused:  # sent again as the relay would, expecting version 1's
                expected = {MSG_ID: lost.msg_id, EXPECTED_SUBJECT_SEQ: str(first)}
                await js.publish(subject, lost.payload, headers=expected)
            assert refused.value.err_code == WRONG_LAST_SEQUENCE  # not a duplicate's acknowledgement
            await relay._publish([lost])  # refused, read again: version 2 is there, not sent
            assert await _out_versions(js, subject) == [1, 2]
            assert await sourced(js, CHANNEL_BUCKET)
            kv = await js.key_value(CHANNEL_BUCKET)
            assert msgspec.json.decode((await kv.get(key)).value)["version"] == 2
    finally:
        await engine.dispose()


async def test_migrate_makes_a_bucket_written_directly_source_the_out_stream_from_its_end_on(
    nats_server_factory: Callable[[], NatsServer],
) -> None:
    """A deployment from before sourcing: the bucket keeps what it holds (the out stream's older history is
    not replayed over it), takes what is published after, and migrate run again changes nothing."""
    server = nats_server_factory()
    key = "store-1.SKU-A"
    subject = f"stocksync.out.availability.{key}"
    body = {v: msgspec.json.encode({"version": v}) for v in (3, 5, 6)}
    async with jetstream(server.url) as (_, js):
        for config in streams():
            await js.add_stream(config)
        old = availability_bucket()
        old.sources = None
        await js.add_stream(old)
        await js.publish(subject, body[3])  # history the relay published before
        await (await js.key_value(AVAILABILITY_BUCKET)).put(key, body[5])  # a newer entry, written directly
        await migrate_topology(server.url)
        sources = (await js.stream_info(f"KV_{AVAILABILITY_BUCKET}")).config.sources
        assert [(s.name, s.opt_start_seq) for s in sources] == [(OUT_STREAM, 2)]
        await asyncio.sleep(0.5)  # time enough to replay the history, were it to
        kv = await js.key_value(AVAILABILITY_BUCKET)
        assert (await kv.get(key)).value == body[5]
        await js.publish(subject, body[6])
        assert await sourced(js, AVAILABILITY_BUCKET)
        assert (await kv.get(key)).value == body[6]
        await migrate_topology(server.url)
        assert (await js.stream_info(f"KV_{AVAILABILITY_BUCKET}")).config.sources == sources
        channels = (await js.stream_info(f"KV_{CHANNEL_BUCKET}")).config.sources
        assert [(s.name, s.opt_start_seq) for s in channels] == [(OUT_STREAM, None)]  # created fresh


async def test_pruning_deletes_only_rows_relayed_before_the_retention_a_slice_at_a_time(stack: Stack) -> None:
    await prepare(stack.database_url, stack.nats_url, [])
    row = "INSERT INTO outbox (subject, msg_id, payload, relayed_at) VALUES ('s', '{id}', '\\x00', {at})"
    old = ["now() - interval '2 hours'"] * 5
    run_sql(
        stack.database_url,
        *[row.format(id=f"old-{n}", at=at) for n, at in enumerate(old)],
        row.format(id="recent", at="now() - interval '10 minutes'"),
        row.format(id="unrelayed", at="NULL"),
    )
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        async with jetstream(stack.nats_url) as (nc, _):
            relay = OutboxRelay(engine, nc, retention=timedelta(hours=1), prune_slice=2)
            assert await relay.prune() == 5  # three slices: 2, 2, 1
            assert await relay.prune() == 0
    finally:
        await engine.dispose()
    kept = run_sql(stack.database_url, "SELECT msg_id FROM outbox ORDER BY msg_id")
    assert [r["msg_id"] for r in kept] == ["recent", "unrelayed"]


async def test_migrate_topology_twice_changes_nothing_and_keeps_messages(stack: Stack) -> None:
    await migrate_topology(stack.nats_url)
    async with jetstream(stack.nats_url) as (_, js):
        await js.publish("stocksync.in.s1.sale", b"kept")
        before = await _topology(js)
        await migrate_topology(stack.nats_url)
        await migrate_topology(stack.nats_url)
        assert await _topology(js) == before
        assert (await js.stream_info(IN_STREAM)).state.messages == 1


async def test_migrate_topology_brings_changed_settings_back(stack: Stack) -> None:
    await migrate_topology(stack.nats_url)
    async with jetstream(stack.nats_url) as (_, js):
        wanted = await _topology(js)
        in_config = wanted["configs"][IN_STREAM]
        await js.update_stream(dataclasses.replace(in_config, max_age=3600.0))
        await js.update_stream(dataclasses.replace(wanted["configs"][DLQ_STREAM], max_msgs=10))
        await js.add_consumer(
            IN_STREAM, dataclasses.replace(worker_consumer(), ack_wait=5.0, max_ack_pending=10)
        )
        bucket = wanted["bucket"][0]
        await js.update_stream(dataclasses.replace(bucket, max_msgs_per_subject=5, description="changed"))
        changed = await _topology(js)
        assert changed["configs"][IN_STREAM].max_age == 3600.0
        assert changed["consumer"][0].ack_wait == 5.0
        assert changed["bucket"][0].max_msgs_per_subject == 5

        await migrate_topology(stack.nats_url)

        assert await _topology(js) == wanted


# --- volume, duplicates, shuffled order -------------------------------------------------------------------


def mixed_events(rng: random.Random, locations: list[str], skus: list[str], n: int) -> list:
    """``n`` events of every inbound type over a few positions; collects and cancels name earlier reserves
    (or, now and then, none), counts are spread in time so later ones supersede older sales and returns."""
    events: list = []
    reservations: list[tuple[str, str]] = []
    kinds = ["receipt", "sale", "return", "adjust", "count", "reserve", "collect", "cancel"]
    weights = [20, 24, 8, 8, 4, 16, 10, 10]
    while len(events) < n:
        kind = rng.choices(kinds, weights)[0]
        loc = rng.choice(locations)
        lines = rng.sample(skus, rng.randint(1, 3))
        when = rng.uniform(0, 600)
        if kind == "receipt":
            events.append(receipt(loc, {sku: rng.randint(1, 20) for sku in lines}, at=when))
        elif kind == "sale":
            events.append(sale(loc, {sku: rng.randint(1, 4) for sku in lines}, at=when))
        elif kind == "return":
            disposition = rng.choice(["restock", "damaged"])
            events.append(
                return_(loc, {sku: rng.randint(1, 3) for sku in lines}, disposition=disposition, at=when)
            )
        elif kind == "adjust":
            deltas = {sku: rng.choice([-3, -2, -1, 1, 2, 5]) for sku in lines}
            events.append(
                adjust(loc, deltas, reason=rng.choice(["shrinkage", "found", "correction"]), at=when)
            )
        elif kind == "count":
            events.append(count(loc, {sku: rng.randint(0, 60) for sku in lines}, at=when))
        elif kind == "reserve":
            made = reserve(loc, {sku: rng.randint(1, 3) for sku in lines}, at=when)
            reservations.append((loc, made.reservation_id))
            events.append(made)
        elif reservations:
            held_at, reservation_id = rng.choice(reservations)
            if rng.random() < 0.05:
                reservation_id = unique("res-unknown")
            settle = collect if kind == "collect" else cancel
            events.append(settle(held_at, reservation_id, at=when))
    return events


@pytest.mark.slow
async def test_ten_thousand_events_with_duplicates_in_shuffled_order_end_where_the_model_does(
    stack: Stack,
) -> None:
    rng = random.Random(20261123)
    locations = [unique("store") for _ in range(3)]
    skus = [unique("SKU") for _ in range(5)]
    await prepare(stack.database_url, stack.nats_url, locations)
    events = mixed_events(rng, locations, skus, 10_000)
    rng.shuffle(events)
    repeated = rng.sample(events, 2_000)
    repeated_with_id, repeated_without = repeated[:1_000], repeated[1_000:]

    async with jetstream(stack.nats_url) as (_, js):
        # Repeats reach the worker with Nats-Msg-Id or without: STOCKSYNC_IN de-duplicates for 100 ms only
        # (a publisher chooses the id), and the ledger's record makes a repeat harmless.
        with_id = events + repeated_with_id
        rng.shuffle(with_id)
        cut = len(with_id) // 2
        acks = await publish_events(js, with_id[:cut])
        acks += await publish_events(js, repeated_without, msg_id=False)
        acks += await publish_events(js, with_id[cut:])
        stored = await read_stream(js, IN_STREAM, "stocksync.in.>")
        assert len(stored) == len(acks) - sum(ack.duplicate or False for ack in acks)
        deliveries = Counter(decode_inbound(m.data).event_id for m in stored)
        assert set(deliveries) == {e.event_id for e in events}
        delivered_twice = {event_id for event_id, n in deliveries.items() if n == 2}

        model = ReferenceLedger(locations).apply(decode_inbound(m.data) for m in stored)

        async with in_process(stack.database_url, stack.nats_url):
            await wait_until(
                lambda: _count_is(count_processed(stack.database_url, locations), len(events)),
                what="every event recorded",
            )
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
            await wait_until(lambda: _is_zero(unrelayed(stack.database_url)), what="the outbox relayed")
            kv = await js.key_value(AVAILABILITY_BUCKET)
            bucket = {
                key: decode_availability((await kv.get(f"{key[0]}.{key[1]}")).value)
                for key in model.positions()
            }

        assert await read_stream(js, DLQ_STREAM, "stocksync.dlq.>") == []
        reported = [
            msgspec.json.decode(m.data) for m in await read_stream(js, OUT_STREAM, "stocksync.out.outcome.>")
        ]

    recorded = await outcomes(stack.database_url, locations)
    assert recorded == model.outcomes
    assert set(recorded) == {e.event_id for e in events}
    assert Counter(recorded.values())["applied"] > len(events) // 2  # the mix is mostly applicable

    ledger = await positions(stack.database_url, locations)
    assert ledger == model.positions()

    moved = await movements_per_event(stack.database_url, locations)
    assert moved == model.movements_per_event()
    for event in events:
        if (
            event.type in ("receipt", "sale", "return", "adjust", "count")
            and recorded[event.event_id] == "applied"
        ):
            assert moved[event.event_id] == len(event.lines), event
    assert await reservation_statuses(stack.database_url, locations) == model.reservation_statuses()

    # The relay: every delivery reported, a repeat of an applied event as ``duplicate`` (a repeat of a refused
    # one is the same outcome message again, which its Nats-Msg-Id collapses), and the bucket holds the end.
    assert Counter(body["event_id"] for body in reported) == Counter(
        {e.event_id: 1 for e in events}
        | {event_id: 2 for event_id in delivered_twice if recorded[event_id] == "applied"}
    )
    assert {body["outcome"] for body in reported if body["event_id"] in delivered_twice} == {
        "applied",
        "duplicate",
        "rejected",
    }
    assert {key: {k: getattr(a, k) for k in ledger[key]} for key, a in bucket.items()} == ledger


async def _count_is(counted, expected: int) -> bool:
    return (await counted) == expected


async def _at_least(counted, expected: int) -> bool:
    return (await counted) >= expected


async def _is_zero(counted) -> bool:
    return (await counted) == 0


# --- two workers, two relays ------------------------------------------------------------------------------


def commutative_events(rng: random.Random, locations: list[str], skus: list[str], n: int) -> list:
    """Events whose end result does not depend on their order: stock moves, and reserves that always fit
    (every position starts with far more than all of them take), each sku at most once per event."""
    makers = [
        lambda loc, lines: receipt(loc, {sku: rng.randint(1, 20) for sku in lines}),
        lambda loc, lines: sale(loc, {sku: rng.randint(1, 5) for sku in lines}),
        lambda loc, lines: return_(
            loc, {sku: 1 for sku in lines}, disposition=rng.choice(["restock", "damaged"])
        ),
        lambda loc, lines: adjust(
            loc, {sku: rng.choice([-2, -1, 1, 3]) for sku in lines}, reason="correction"
        ),
        lambda loc, lines: reserve(loc, {sku: rng.randint(1, 3) for sku in lines}),
    ]
    return [
        rng.choice(makers)(rng.choice(locations), rng.sample(skus, rng.randint(1, len(skus))))
        for _ in range(n)
    ]


def opening_stock(locations: list[str], skus: list[str]) -> list:
    return [receipt(loc, {sku: 100_000 for sku in skus}, at=-1) for loc in locations]


@pytest.mark.slow
async def test_two_workers_and_two_relays_reach_the_model_and_publish_each_position_in_version_order(
    stack: Stack, tmp_path: Path
) -> None:
    rng = random.Random(6)
    locations = [unique("store") for _ in range(2)]
    skus = [unique("SKU") for _ in range(4)]
    await prepare(stack.database_url, stack.nats_url, locations)
    opening, events = opening_stock(locations, skus), commutative_events(rng, locations, skus, 4_000)
    model = ReferenceLedger(locations).apply(opening + events)
    services = [
        ServiceProcess(["worker", "relay"], stack.database_url, stack.nats_url, tmp_path / f"service-{n}.log")
        for n in range(2)
    ]

    async with jetstream(stack.nats_url) as (_, js), processes(*services):
        await publish_events(js, opening)
        await wait_until(
            lambda: _count_is(count_processed(stack.database_url, locations), len(opening)),
            what="opening stock",
        )
        await set_ack_wait(js, 3.0)  # what the killed worker held comes back within the test's budget
        half = len(events) // 2
        for start in range(0, half, 500):
            await publish_events(js, events[start : start + 500])
        await wait_until(
            lambda: _at_least(count_processed(stack.database_url, locations), half // 2),
            what="half of the first half",
        )
        leader = await wait_until(lambda: relay_leader(stack.database_url, services), what="a leading relay")
        leader.kill()  # its relay's lock goes with its session: the other relay takes over
        leader.start()
        for start in range(half, len(events), 500):
            await publish_events(js, events[start : start + 500])
        await wait_until(
            lambda: _count_is(count_processed(stack.database_url, locations), len(opening) + len(events)),
            what="every event recorded",
        )
        await wait_until(lambda: consumer_settled(js), what="the consumer settled")
        await wait_until(lambda: _is_zero(unrelayed(stack.database_url)), what="the outbox relayed")
        assert all(service.alive for service in services), [s.log_tail() for s in services]
        assert await read_stream(js, DLQ_STREAM, "stocksync.dlq.>") == []
        availability = await read_stream(js, OUT_STREAM, "stocksync.out.availability.>")
        kv = await js.key_value(AVAILABILITY_BUCKET)
        bucket = {
            key: decode_availability((await kv.get(f"{key[0]}.{key[1]}")).value) for key in model.positions()
        }

    assert all("batch_applied" in service.log() for service in services), "both workers took batches"
    assert set((await outcomes(stack.database_url, locations)).values()) == {"applied"}
    ledger = await positions(stack.database_url, locations)
    assert ledger == model.positions()  # versions too: each line of each event moves its position once
    assert await movements_per_event(stack.database_url, locations) == model.movements_per_event()

    seen = versions_in_stream_order(availability)
    assert out_of_order(seen) == {}
    assert {key: versions[-1] for key, versions in seen.items()} == {
        key: n["version"] for key, n in ledger.items()
    }
    assert {key: a.version for key, a in bucket.items()} == {key: n["version"] for key, n in ledger.items()}
    assert without_version({key: {k: getattr(a, k) for k in ledger[key]} for key, a in bucket.items()}) == (
        without_version(ledger)
    )
