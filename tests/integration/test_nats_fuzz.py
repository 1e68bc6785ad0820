"""The NATS fuzz campaign (issue 15, "bad input everywhere"): every kind of broken message a till, a bug or an
attacker could publish on ``stocksync.in.>``, interleaved with good events, against the worker running for real.

Every bad message lands in ``STOCKSYNC_DLQ`` once, with its code and its inbound stream sequence; every good event
is applied exactly once; the worker's consumer ends with nothing pending and nothing unacknowledged, and nothing was
redelivered (``ack_wait`` is an hour: a message the worker left hanging would fail the test, not pass late).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stocksync.domain.events import encode
from stocksync.wire import DLQ_STREAM, IN_STREAM, WORKER_CONSUMER, DeadLetter
from tests.support import NatsServer
from tests.support_ledger import receipt, sale, unique
from tests.support_nats import (
    ReferenceLedger,
    consumer_settled,
    in_process,
    jetstream,
    movements_per_event,
    outcomes,
    positions,
    prepare,
    read_stream,
    set_ack_wait,
    subject_of,
    wait_until,
)

KIB = 1024


@dataclass(frozen=True)
class Bad:
    what: str
    subject: str
    body: bytes
    code: str
    headers: dict[str, str] | None = None


def envelope(loc: str, sku: str, **changes: Any) -> dict[str, Any]:
    """A valid sale body as a dict, with ``changes`` applied (a value of ``...`` removes the field)."""
    body = msgspec.json.decode(encode(sale(loc, {sku: 1})))
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def js_bytes(body: Any) -> bytes:
    return msgspec.json.encode(body)


def bad_messages(loc: str, sku: str) -> list[Bad]:
    """One of each kind of broken message, with the code its dead letter must carry."""
    on = f"stocksync.in.{loc}.sale"

    def body(**changes: Any) -> bytes:
        return js_bytes(envelope(loc, sku, **changes))

    def plus(extra: bytes) -> bytes:  # a valid sale with raw JSON appended as one more field
        return body()[:-1] + b"," + extra + b"}"

    def deep(levels: int) -> bytes:
        return b"[" * levels + b"]" * levels

    many_lines = body(lines=[{"sku": "A", "qty": 1}] * 10_000)  # 200 KB: under the size limit
    adjust = body(type="adjust", lines=[{"sku": sku, "delta": 2**70, "reason": "found"}])
    count = body(type="count", lines=[{"sku": sku, "counted": -(2**70)}])
    reserve = body(type="reserve", reservation_id="r\x7f1", channel="ecommerce")
    control = bytes(range(1, 32)) * (100 * KIB // 31)
    return [
        Bad("1,000 levels in an extra field", on, plus(b'"x":' + deep(1_000)), "too_deep"),
        Bad("100,000 levels in an extra field", on, plus(b'"x":' + deep(100_000)), "too_deep"),
        Bad("100,000 levels", on, deep(100_000), "invalid_event"),  # not an object: refused at once
        Bad("invalid UTF-8 in a field", on, plus(b'"source":"\xff\xfe"'), "undecodable"),
        Bad("invalid UTF-8", on, b"\xff\xfe\xfd\x00", "undecodable"),
        Bad("empty", on, b"", "undecodable"),
        Bad("100 KB of control bytes", on, control, "undecodable"),
        Bad("past 256 KiB", on, plus(b'"pad":"' + b"p" * (300 * KIB) + b'"'), "body_too_large"),
        Bad("near the stream's limit", on, plus(b'"pad":"' + b"p" * (508 * KIB) + b'"'), "body_too_large"),
        Bad("10,000 lines", on, many_lines, "invalid_event"),
        Bad("not an object", on, b"[]", "invalid_event"),
        Bad("too few subject tokens", "stocksync.in.x", body(), "subject_mismatch"),
        Bad("too many subject tokens", f"{on}.extra", body(), "subject_mismatch"),
        Bad("type not the subject's", f"stocksync.in.{loc}.receipt", body(), "subject_mismatch"),
        Bad("location not the subject's", f"stocksync.in.{unique('s')}.sale", body(), "subject_mismatch"),
        Bad("invalid location token", "stocksync.in.no$such.sale", body(), "subject_mismatch"),
        Bad("unknown type", f"stocksync.in.{loc}.steal", body(type="steal"), "invalid_event"),
        Bad("invalid location id", on, body(location_id="no such/place"), "invalid_event"),
        Bad("no event_id", on, body(event_id=...), "invalid_event"),
        Bad("no lines", on, body(lines=...), "invalid_event"),
        Bad("no occurred_at", on, body(occurred_at=...), "invalid_event"),
        Bad("qty 2**70", on, body(lines=[{"sku": sku, "qty": 2**70}]), "invalid_event"),
        Bad("delta 2**70", f"stocksync.in.{loc}.adjust", adjust, "invalid_event"),
        Bad("counted -2**70", f"stocksync.in.{loc}.count", count, "invalid_event"),
        Bad("a control character in event_id", on, body(event_id="till\x01"), "invalid_event"),
        Bad("a control character in location_id", on, body(location_id="a\nb"), "invalid_event"),
        Bad("NUL in a sku", on, body(lines=[{"sku": "SKU\x00", "qty": 1}]), "invalid_event"),
        Bad("DEL in a reservation id", f"stocksync.in.{loc}.reserve", reserve, "invalid_event"),
        Bad("an escape sequence in reference", on, body(reference="r\x1b[2J"), "invalid_event"),
        Bad("wrong Nats-Msg-Id", on, body(), "msg_id_mismatch", {"Nats-Msg-Id": "someone-else"}),
    ]


def good_events(rng: random.Random, loc: str, skus: list[str], n: int) -> list:
    """Receipts and sales: they commute, so any order of application ends where the model does."""
    return [
        (receipt if rng.random() < 0.5 else sale)(
            loc, {sku: rng.randint(1, 5) for sku in rng.sample(skus, 2)}
        )
        for _ in range(n)
    ]


def with_extra_fields(event) -> bytes:
    """A good event with fields the contract does not name, at the top and in a line: tolerated (forward
    compatibility), so it is applied like the plain one."""
    body = msgspec.json.decode(encode(event))
    body["till_firmware"] = {"version": "9.1", "build": 2**70, "flags": [[1], [2]]}
    body["lines"][0]["colour"] = "red"
    return js_bytes(body)


async def publish_all(js, items: list) -> dict[int, Any]:
    """Publish good events and bad messages in the order given; stream sequence -> what was published."""
    published: dict[int, Any] = {}
    for item in items:
        if isinstance(item, Bad):
            ack = await js.publish(item.subject, item.body, headers=item.headers, timeout=30)
        else:
            body = with_extra_fields(item) if item.event_id.endswith("0") else encode(item)
            ack = await js.publish(subject_of(item), body, headers={"Nats-Msg-Id": item.event_id}, timeout=30)
        published[ack.seq] = item
    return published


async def dead_letters(js, subject: str = "stocksync.dlq.>") -> list[DeadLetter]:
    return [msgspec.json.decode(m.data, type=DeadLetter) for m in await read_stream(js, DLQ_STREAM, subject)]


async def _recorded(database_url: str, loc: str, n: int) -> bool:
    return len(await outcomes(database_url, [loc])) >= n


async def run_mixed(
    rng: random.Random, database_url: str, nats_url: str, loc: str, good: list, bad: list[Bad]
) -> tuple[dict[int, Any], list[DeadLetter], list[DeadLetter]]:
    """Publish the good and the bad shuffled to a running worker until every good one is recorded; return
    what was published by stream sequence, the dead letters, and those on ``stocksync.dlq._`` (no location),
    once the consumer has nothing left (no message pending, unacknowledged or redelivered)."""
    items: list = [*good, *bad]
    rng.shuffle(items)
    async with jetstream(nats_url) as (_, js):
        await set_ack_wait(js, 3_600.0)
        async with in_process(database_url, nats_url, roles=("worker",)):
            published = await publish_all(js, items)
            await wait_until(lambda: _recorded(database_url, loc, len(good)), what="the good events recorded")
            await wait_until(lambda: consumer_settled(js), what="the consumer settled")
        letters = await dead_letters(js)
        info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
        unknown_location = await dead_letters(js, "stocksync.dlq._")
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    return published, letters, unknown_location


async def test_every_bad_message_is_dead_lettered_with_its_code_and_every_good_event_applies_once(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    rng = random.Random(15)
    loc, skus = unique("store"), [unique("SKU") for _ in range(5)]
    await prepare(database_url, nats.url, [loc])
    good = good_events(rng, loc, skus, 300)
    bad = bad_messages(loc, skus[0])
    published, letters, unknown_location = await run_mixed(rng, database_url, nats.url, loc, good, bad)
    bad_by_seq = {seq: item for seq, item in published.items() if isinstance(item, Bad)}
    assert sorted(letter.stream_sequence for letter in letters) == sorted(bad_by_seq)  # each once
    assert {bad_by_seq[d.stream_sequence].what: d.error for d in letters} == {b.what: b.code for b in bad}
    assert Counter(d.error for d in letters) == Counter(b.code for b in bad)
    assert all(d.detail and d.subject == bad_by_seq[d.stream_sequence].subject for d in letters)
    assert [d.subject for d in unknown_location] == ["stocksync.in.no$such.sale"]

    assert await outcomes(database_url, [loc]) == {e.event_id: "applied" for e in good}
    assert await movements_per_event(database_url, [loc]) == {e.event_id: len(e.lines) for e in good}
    assert await positions(database_url, [loc]) == ReferenceLedger([loc]).apply(good).positions()


# --- random bytes and mangled envelopes (hypothesis) ------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
WRONG_FOR = {  # a value of a kind each required field can never take
    "event_id": st.none() | st.integers() | st.text(alphabet="\x00\x01\n\x7f", min_size=1),
    "location_id": st.none() | st.integers() | st.text(alphabet="./* \x00", min_size=1),
    "occurred_at": st.none() | st.integers() | st.just("2026-11-23T10:00:00"),
    "lines": st.none() | st.integers() | st.just([]) | st.lists(st.integers(), min_size=1, max_size=3),
    "type": st.sampled_from(["", "steal", "SALE"]) | st.integers(),
}
RANDOM_CODES = {"undecodable", "invalid_event", "too_deep"}


@st.composite
def mangled(draw) -> Callable[[str, str], bytes]:
    """A sale body with one required field removed or replaced by a value it can never take."""
    field = draw(st.sampled_from(sorted(WRONG_FOR)))
    value = draw(st.just(...) | WRONG_FOR[field])
    extra = draw(st.dictionaries(st.text(min_size=1, max_size=8), JSON_VALUES, max_size=2))
    return lambda loc, sku: js_bytes(
        {**envelope(loc, sku, **{field: value}), **{f"x_{k}": v for k, v in extra.items()}}
    )


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.lists(st.binary(max_size=2048), min_size=20, max_size=20),
    envelopes=st.lists(mangled(), min_size=20, max_size=20),
    seed=st.integers(0, 2**32),
)
async def test_random_bytes_and_mangled_envelopes_are_dead_lettered_while_good_events_flow(
    fresh_database: Callable[[], str],
    nats_server_factory: Callable[[], NatsServer],
    raw: list[bytes],
    envelopes: list[Callable[[str, str], bytes]],
    seed: int,
) -> None:
    database_url, nats = fresh_database(), nats_server_factory()
    rng = random.Random(seed)
    loc, skus = unique("store"), [unique("SKU") for _ in range(3)]
    await prepare(database_url, nats.url, [loc])
    good = good_events(rng, loc, skus, 40)
    on = f"stocksync.in.{loc}.sale"
    bad = [Bad("random bytes", on, body, "?") for body in raw]
    bad += [Bad("mangled", on, make(loc, skus[0]), "invalid_event") for make in envelopes]
    published, letters, _ = await run_mixed(rng, database_url, nats.url, loc, good, bad)
    bad_by_seq = {seq: item for seq, item in published.items() if isinstance(item, Bad)}
    assert sorted(letter.stream_sequence for letter in letters) == sorted(bad_by_seq)
    for letter in letters:
        expected = bad_by_seq[letter.stream_sequence].code
        assert letter.error in (RANDOM_CODES if expected == "?" else {expected}), letter
    assert await outcomes(database_url, [loc]) == {e.event_id: "applied" for e in good}
    assert await positions(database_url, [loc]) == ReferenceLedger([loc]).apply(good).positions()
