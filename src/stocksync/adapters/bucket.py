"""The availability entries (positions, channels): published once, to STOCKSYNC_OUT, never after a newer
``version`` of the same subject; the buckets source them from there (`messaging.topology`). An entry that is
not an availability body counts as older than any (so a bad one never stops the relay)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from stocksync import metrics
from stocksync.domain.events import decoder
from stocksync.wire import BUCKET_SOURCES, MSG_ID, OUT_STREAM

log = structlog.get_logger("stocksync.relay")
EXPECTED_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
SOURCE_HEADER = "Nats-Stream-Source"  # on a sourced message: "<stream> <sequence there> ..."
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed expectation
SKIP = -1  # an entry whose subject holds its version or a newer one already: not sent
FIRST_VERSION = 1  # a position's first change: nothing older than it can be on its subject
_EMPTY = (-1, 0)  # a subject with no message: held version, sequence


class _Version(msgspec.Struct):
    version: int


_decode_version = decoder(_Version)


class NewestOnly:
    """Which of a pass's versioned rows to publish, and with what ``Nats-Expected-Last-Subject-Sequence``.

    The out stream keeps the buckets' rule: a subject's message is stored only over the sequence the writer
    last saw there, so a deposed leader's late publish (or one sent again after its subject moved on) is
    refused, whichever relay wrote meanwhile. The leading relay is nearly the only writer, so the sequence
    it stored last is usually still the latest: no read. A subject it has not seen, or whose check failed, is
    read first (its last message on the out stream) and published only over an older version; but a row of
    the first version (1: a position's first change) is published unread at sequence 0, "no message yet": no
    older version can be there, and were anything there the server would refuse it, and the subject be read
    before it is tried again. The memory is bounded: past ``max_keys`` it starts again from empty."""

    def __init__(self, js: JetStreamContext, max_keys: int = 500_000) -> None:
        self.js = js
        self.max_keys = max_keys
        self._known: dict[str, tuple[int, int]] = {}  # subject -> (version, stream sequence) stored last
        self._refused: set[str] = set()  # subjects whose check failed: read before the next try

    async def expectations(self, rows: Sequence[Any]) -> list[int]:
        """Per row: the sequence its subject must be at (0: no message yet), `SKIP`, or None (unversioned)."""
        if len(self._known) > self.max_keys:
            self._known.clear()
            self._refused.clear()
        unknown = {
            r.subject: r.version for r in rows if r.kv_key is not None and r.subject not in self._known
        }
        unread = [s for s, version in unknown.items() if version != FIRST_VERSION or s in self._refused]
        for subject, held in zip(unread, await asyncio.gather(*map(self._last, unread)), strict=True):
            self._known[subject] = held
            self._refused.discard(subject)
        return [self._expect(r) for r in rows]

    def _expect(self, row: Any) -> int | None:
        if row.kv_key is None:
            return None
        version, seq = self._known.get(row.subject, _EMPTY)
        return seq if version < row.version else SKIP

    def stored(self, row: Any, ack: PubAck | BaseException) -> None:
        """Remember what a versioned row's publish left its subject at; forget one whose check failed."""
        if isinstance(ack, PubAck):
            self._known[row.subject] = (row.version, ack.seq)
        elif isinstance(ack, APIError) and ack.err_code == WRONG_LAST_SEQUENCE:
            self._known.pop(row.subject, None)
            self._refused.add(row.subject)

    async def _last(self, subject: str) -> tuple[int, int]:
        try:
            msg = await self.js.get_last_msg(OUT_STREAM, subject)
        except NotFoundError:
            return -1, 0
        return held_version(subject, msg.data), msg.seq


def held_version(key: str, value: bytes | None) -> int:
    """The ``version`` an entry holds. One that is not an availability body (written by hand, or by something
    else) counts as older than any version: the relay writes over it, and never stops for it."""
    if not value:
        return -1
    try:
        return _decode_version(value).version
    except msgspec.DecodeError as error:  # not JSON, nested too deep, no integer ``version``
        metrics.BUCKET_MALFORMED.inc()
        log.warning("bucket_entry_malformed", key=key, error=str(error))
        return -1


async def put_if_newer(kv: KeyValue, key: str, version: int, payload: bytes) -> tuple[str, tuple[int, int]]:
    """Compare-and-set on the bucket itself (reconcile's repairs): write only over an older version, retrying
    when another writer got in between. Returns the key with the (version, revision) it holds now."""
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            try:
                return key, (version, await kv.create(key, payload))
            except KeyWrongLastSequenceError:
                continue
        held = held_version(key, entry.value)
        if held >= version:
            return key, (held, entry.revision)
        try:
            return key, (version, await kv.update(key, payload, last=entry.revision))
        except KeyWrongLastSequenceError:
            continue


async def sourced(js: JetStreamContext, bucket: str, timeout_s: float = 10.0) -> bool:
    """Wait until the bucket has taken the out stream's last message it sources, and so every earlier one:
    sourcing is asynchronous, and in order. False when it has not within ``timeout_s``."""
    source, stream, prefix = BUCKET_SOURCES[bucket]
    try:
        last = await js.get_last_msg(OUT_STREAM, source)
    except NotFoundError:
        return True
    entry = prefix + ".".join(last.subject.split(".")[-2:])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            held = await js.get_last_msg(stream, entry)
        except NotFoundError:
            held = None
        if held is not None and _taken(held, last):
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


def _taken(held: Any, last: Any) -> bool:
    """The entry holds the out stream's message ``last`` or a later one (sourced: its origin sequence says;
    written directly, by reconcile: its version)."""
    origin = (held.headers or {}).get(SOURCE_HEADER)
    if origin is not None:
        return int(origin.split()[1]) >= last.seq
    return held_version(held.subject, held.data) >= held_version(last.subject, last.data)


async def publish_if_newer(js: JetStreamContext, row: Any) -> bool:
    """Reconcile's repairs: ``row`` (subject, msg_id, payload, kv_key, version) published on the out stream
    only over an older version, read first and tried again when a writer got in between; False when its
    subject holds that version or a newer one already."""
    newest = NewestOnly(js)
    while True:
        [seq] = await newest.expectations([row])
        if seq == SKIP:
            return False
        try:
            headers = {MSG_ID: row.msg_id, EXPECTED_SUBJECT_SEQ: str(seq)}
            await js.publish(row.subject, row.payload, headers=headers)
            return True
        except APIError as error:
            if error.err_code != WRONG_LAST_SEQUENCE:
                raise
            newest.stored(row, error)
