"""The outbox relay: publishes every committed change, at least once, in commit order per position.

Rows are picked by their unrelayed flag, never by ``id > last_seen`` (ids are taken before commit, so a
late-committing transaction would be skipped). One relay leads at a time, by a PostgreSQL advisory lock
held on its own session; the others wait to take over, so several may run without reordering a position's
updates. The leader wakes on NOTIFY from the committing transaction, and polls as a fallback. The KV bucket
is written by compare-and-set on the entry's revision, never replacing a newer ``version`` with an older.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import msgspec
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync import metrics
from stocksync.aio import pause
from stocksync.messaging.topology import AVAILABILITY_BUCKET
from stocksync.service.clock import utc_now

log = structlog.get_logger("stocksync.relay")

LEADER_LOCK = 0x5707C6
NOTIFY_CHANNEL = "stocksync_outbox"
_PENDING = text(
    "SELECT id, subject, msg_id, payload, kv_key, version FROM outbox WHERE relayed_at IS NULL ORDER BY id LIMIT :n"
)
_MARK = text("UPDATE outbox SET relayed_at = :now WHERE id = ANY(CAST(:ids AS bigint[]))")
_PRUNE = text("DELETE FROM outbox WHERE relayed_at < :before")


class _Version(msgspec.Struct):
    version: int


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        nc: Client,
        *,
        batch: int = 1000,
        poll_s: float = 0.5,
        retention: timedelta = timedelta(days=1),
    ) -> None:
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream()
        self.batch = batch
        self.poll_s = poll_s
        self.retention = retention
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.engine.connect() as session:
                    if await self._lead(session):
                        await self._relay_while_leading(session, stop)
            except (SQLAlchemyError, OSError, NatsError, TimeoutError) as error:
                log.warning("relay_interrupted", error=f"{type(error).__name__}: {error}")
            await pause(stop, 1.0)

    async def _lead(self, session: AsyncConnection) -> bool:
        leading = await session.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK})
        await session.commit()
        return bool(leading)

    async def _relay_while_leading(self, session: AsyncConnection, stop: asyncio.Event) -> None:
        raw = (await session.get_raw_connection()).driver_connection
        await raw.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        kv = await self.js.key_value(AVAILABILITY_BUCKET)
        log.info("relay_leading")
        passes = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                if await self.relay_once(kv) == self.batch:
                    continue
                if passes % 600 == 0:
                    await self.prune()
                passes += 1
                await pause(stop, self.poll_s, self._wake)
        finally:
            await session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK})

    async def relay_once(self, kv: KeyValue) -> int:
        """Publish the oldest unrelayed rows in order, update the bucket, then mark them relayed."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(_PENDING, {"n": self.batch})).all()
            if not rows:
                metrics.OUTBOX_LAG.set(0)
                return 0
            await self._publish(rows)
            await self._update_bucket(kv, rows)
            await conn.execute(_MARK, {"now": utc_now(), "ids": [r.id for r in rows]})
        metrics.RELAYED.inc(len(rows))
        return len(rows)

    async def _publish(self, rows: Sequence) -> None:
        """Subjects in parallel, each subject's rows one after another: were a publish retried after a newer
        one of the same position had been stored, the stream would hold its versions out of order."""
        by_subject: dict[str, list] = {}
        for row in rows:
            by_subject.setdefault(row.subject, []).append(row)

        async def in_order(subject_rows: list) -> None:
            for r in subject_rows:
                await self.js.publish(r.subject, r.payload, headers={"Nats-Msg-Id": r.msg_id})

        await asyncio.gather(*(in_order(subject_rows) for subject_rows in by_subject.values()))

    async def _update_bucket(self, kv: KeyValue, rows: Sequence) -> None:
        newest: dict[str, tuple[int, bytes]] = {}
        for row in rows:
            if row.kv_key is not None and row.version > newest.get(row.kv_key, (-1, b""))[0]:
                newest[row.kv_key] = (row.version, row.payload)
        await asyncio.gather(*(put_if_newer(kv, key, v, payload) for key, (v, payload) in newest.items()))

    async def prune(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(_PRUNE, {"before": utc_now() - self.retention})
        return result.rowcount


async def put_if_newer(kv: KeyValue, key: str, version: int, payload: bytes) -> None:
    """Compare-and-set: write only over an older version, retrying when another writer got in between."""
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            try:
                await kv.create(key, payload)
                return
            except KeyWrongLastSequenceError:
                continue
        if entry.value and msgspec.json.decode(entry.value, type=_Version).version >= version:
            return
        try:
            await kv.update(key, payload, last=entry.revision)
            return
        except KeyWrongLastSequenceError:
            continue
