"""The availability buckets (positions, channels) written by compare-and-set: never a newer ``version``
replaced by an older, and an
entry that is not an availability body counted as older than any (so a bad entry never stops the writer)."""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from stocksync import metrics
from stocksync.adapters.pipeline import Pipeline
from stocksync.domain.events import decoder
from stocksync.wire import AVAILABILITY_KV_SUBJECT

log = structlog.get_logger("stocksync.relay")


class _Version(msgspec.Struct):
    version: int


_decode_version = decoder(_Version)


class BucketWriter:
    """Writes availability to the bucket by compare-and-set, remembering each key's (version, revision).

    The leading relay is nearly the only writer, so the revision it wrote last is usually still the latest:
    one pipelined publish with ``Nats-Expected-Last-Subject-Sequence`` replaces a read and a write. A key it
    has not seen, or whose check fails (a reconcile repair or a former leader wrote meanwhile), goes the slow
    way, `put_if_newer`. The memory is bounded: past ``max_keys`` it starts again from empty.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        ack_timeout_s: float,
        max_keys: int = 500_000,
        subject_prefix: str = AVAILABILITY_KV_SUBJECT,
    ) -> None:
        self.pipeline = pipeline
        self.subject_prefix = subject_prefix  # the bucket's stream subject before the key
        self.ack_timeout_s = ack_timeout_s
        self.max_keys = max_keys
        self._known: dict[str, tuple[int, int]] = {}

    async def write(self, kv: KeyValue, newest: dict[str, tuple[int, bytes]]) -> None:
        if len(self._known) > self.max_keys:
            self._known.clear()
        fast, slow = [], []
        for key, (version, payload) in newest.items():
            known = self._known.get(key)
            if known is None:
                slow.append(key)
            elif known[0] < version:  # else already there: a pass sent again after a failure
                headers = {"Nats-Expected-Last-Subject-Sequence": str(known[1])}
                sent = await self.pipeline.publish(f"{self.subject_prefix}{key}", payload, headers)
                fast.append((key, version, sent))
        acks = await self.pipeline.acknowledged([sent for _, _, sent in fast], self.ack_timeout_s)
        for (key, version, _), ack in zip(fast, acks, strict=True):
            if isinstance(ack, PubAck):
                self._known[key] = (version, ack.seq)
            else:
                slow.append(key)
        for known in await asyncio.gather(*(put_if_newer(kv, key, *newest[key]) for key in slow)):
            self._known.update([known])


def held_version(key: str, value: bytes | None) -> int:
    """The ``version`` a bucket entry holds. An entry that is not an availability body (written by hand, or
    by something else) counts as older than any version: the relay writes over it, and never stops for it."""
    if not value:
        return -1
    try:
        return _decode_version(value).version
    except msgspec.DecodeError as error:  # not JSON, nested too deep, no integer ``version``
        metrics.BUCKET_MALFORMED.inc()
        log.warning("bucket_entry_malformed", key=key, error=str(error))
        return -1


async def put_if_newer(kv: KeyValue, key: str, version: int, payload: bytes) -> tuple[str, tuple[int, int]]:
    """Compare-and-set: write only over an older version, retrying when another writer got in between.
    Returns the key with the (version, revision) it holds now."""
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
