"""The outbox table as the relay reads it, and the relay's leader lock (a PostgreSQL advisory lock).

A transaction's messages are one row, a bundle (`packed`), read back as messages (`unpacked`).

Rows are picked by their unrelayed flag in id order, never by ``id > last_seen``: ids are taken before commit,
so a late-committing transaction would be skipped. `leading` is how the relay and `reconcile --repair` both
take the lock, so no repair overtakes a running relay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import NamedTuple

import msgspec
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync.wire import OUTBOX_BUNDLE

LEADER_LOCK = 0x5707C6
OUTBOX_CHANNEL = "stocksync_outbox"  # NOTIFY after a commit that wrote outbox rows: the leader wakes
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
# The lock as PostgreSQL shows it for this session (a bigint key: its high half in classid, low in objid).
_HOLDS_LOCK = text(
    """
    SELECT EXISTS (
        SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
        AND classid = CAST(CAST(:key AS bigint) >> 32 AS oid)
        AND objid = CAST(CAST(:key AS bigint) & 4294967295 AS oid) AND objsubid = 1
    )
    """
)
# The oldest rows holding at most :n messages (at least one row), the read's limit in messages: a bundle holds a
# whole transaction's. ``head_rows``: how many rows the limit in rows let through (more than were returned: the
# rows were cut by their messages; :n of them: more may wait). A data-modifying CTE runs to completion whether
# or not the query reads it: the previous pass's rows are marked relayed in the same statement (one round
# trip, where a mark of their own held the next pass back); they are still unrelayed in the statement's
# snapshot, so they are left out by id.
_PENDING = """
    head AS (
        SELECT id, sum(messages) OVER (ORDER BY id) - messages AS before FROM outbox
        WHERE relayed_at IS NULL{also} ORDER BY id LIMIT :n
    )
    SELECT o.id, o.subject, o.msg_id, o.payload, o.kv_key, o.version, o.traceparent,
           (SELECT count(*) FROM head) AS head_rows
    FROM head JOIN outbox o USING (id) WHERE head.before < :n ORDER BY o.id
"""
_ONLY_PENDING = text("WITH" + _PENDING.format(also=""))
_MARK_AND_PENDING = text(
    """
    WITH marked AS (
        UPDATE outbox SET relayed_at = :now
        FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait
        WHERE id = ANY(CAST(:ids AS bigint[]))
    ),"""
    + _PENDING.format(also=" AND id <> ALL(CAST(:ids AS bigint[]))")
)
# How many messages wait and how old the oldest is, by the database's clock (the relay's may differ): both by the
# partial index on unrelayed rows, the oldest being the first by id.
_BACKLOG = text(
    """
    SELECT coalesce(sum(messages), 0) AS waiting, coalesce(extract(epoch FROM now() - (
        SELECT created_at FROM outbox WHERE relayed_at IS NULL ORDER BY id LIMIT 1
    )), 0) AS oldest_s
    FROM outbox WHERE relayed_at IS NULL
    """
)
# A mark lost in a crash only means the rows are sent again (dropped by Nats-Msg-Id, or an older version in
# the bucket): the mark's commit need not wait for the WAL flush (``synchronous_commit`` off for its own
# transaction), and the next pass starts that much sooner.
_MARK = text(
    """
    UPDATE outbox SET relayed_at = :now
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait
    WHERE id = ANY(CAST(:ids AS bigint[]))
    """
)
# A slice at a time in id order from ``after`` (by the key's index: no statement runs long or scans the table,
# and no index on relayed_at is written at every mark): rows were relayed in id order, so the slice holding
# the first row kept (too recent, or unrelayed) is the last one worth reading.
_PRUNE = text(
    """
    WITH slice AS (SELECT id FROM outbox WHERE id > :after ORDER BY id LIMIT :n),
    gone AS (DELETE FROM outbox o USING slice WHERE o.id = slice.id AND o.relayed_at < :before RETURNING 1)
    SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM slice) AS seen,
           (SELECT max(id) FROM slice) AS last
    """
)


async def try_lead(session: AsyncConnection) -> bool:
    """Take the leader lock on this session if no one holds it."""
    return bool(await session.scalar(_TRY_LOCK, {"key": LEADER_LOCK}))


async def let_go(session: AsyncConnection) -> None:
    await session.execute(_UNLOCK, {"key": LEADER_LOCK})


async def holds_lead(session: AsyncConnection) -> bool:
    """Whether this session still holds the lock, as PostgreSQL sees it."""
    return bool(await session.scalar(_HOLDS_LOCK, {"key": LEADER_LOCK}))


@asynccontextmanager
async def leading(engine: AsyncEngine) -> AsyncIterator[bool]:
    """The leader lock for the block if it is free (True), else False at once; let go on the way out."""
    async with engine.connect() as session:
        if not await try_lead(session):
            yield False
            return
        try:
            yield True
        finally:
            await let_go(session)
            await session.commit()


class OutboxMessage(msgspec.Struct, array_like=True):
    """A message to publish, as an outbox row holds it (the row is one, or a bundle holds several)."""

    subject: str
    msg_id: str
    payload: bytes
    kv_key: str | None = None
    version: int | None = None
    traceparent: str | None = None  # the writing transaction's, set from the bundle's row


_encode_bundle = msgspec.msgpack.Encoder().encode
_decode_bundle = msgspec.msgpack.Decoder(list[OutboxMessage]).decode


def packed(rows: list[dict]) -> list[dict]:
    """A transaction's outbox rows as one row when there are several: each row is written three times
    (insert, mark, prune), a bundle once for them all. Their order in the bundle is their order in the
    outbox; the bundle's msg_id is its first message's, for reading it in the table, and its kv_key their
    keys separated by spaces (which no key holds): reconcile tells the positions in flight by it."""
    if len(rows) < 2:
        return rows
    first = rows[0]
    bundle = [(r["subject"], r["msg_id"], r["payload"], r["kv_key"], r["version"]) for r in rows]
    keys = " ".join(r["kv_key"] for r in rows if r["kv_key"] is not None)
    return [
        {
            "subject": OUTBOX_BUNDLE,
            "msg_id": first["msg_id"],
            "payload": _encode_bundle(bundle),
            "kv_key": keys or None,
            "version": None,
            "messages": len(rows),
            **({"traceparent": first["traceparent"]} if "traceparent" in first else {}),
        }
    ]


def unpacked(rows: Sequence[Row]) -> list:
    """The rows' messages in outbox order: a row as it is (its columns are a message's), a bundle's each."""
    messages: list = []
    for row in rows:
        if row.subject != OUTBOX_BUNDLE:
            messages.append(row)
            continue
        bundle = _decode_bundle(row.payload)
        if row.traceparent:
            for message in bundle:
                message.traceparent = row.traceparent
        messages.extend(bundle)
    return messages


class Pending(NamedTuple):
    ids: list[int]  # the rows read: marked relayed once their messages are published
    messages: list  # theirs, in outbox order
    full: bool  # the read stopped at its limit: more rows wait


async def pending(
    conn: AsyncConnection, n: int, marking: tuple[list[int], datetime] | None = None
) -> Pending:
    """The oldest unrelayed rows holding at most ``n`` messages (at least one row), in id order; ``marking``:
    rows (ids, when) marked relayed first, in the same statement."""
    if marking is None:
        rows = (await conn.execute(_ONLY_PENDING, {"n": n})).all()
    else:
        ids, now = marking
        rows = (await conn.execute(_MARK_AND_PENDING, {"n": n, "ids": ids, "now": now})).all()
    head = rows[0].head_rows if rows else 0
    return Pending([r.id for r in rows], unpacked(rows), full=head == n or head > len(rows))


async def backlog(conn: AsyncConnection) -> tuple[int, float]:
    """Messages not yet relayed, and the age in seconds of the oldest (0 when none)."""
    row = (await conn.execute(_BACKLOG)).one()
    return int(row.waiting), max(0.0, float(row.oldest_s))


async def mark_relayed(conn: AsyncConnection, ids: list[int], now: datetime) -> None:
    await conn.execute(_MARK, {"now": now, "ids": ids})


async def prune(
    engine: AsyncEngine, before: datetime, slice_rows: int, after: int = 0
) -> tuple[int, int | None]:
    """Delete the rows relayed before ``before`` among the ``slice_rows`` after id ``after``, in a
    transaction; returns how many, and the slice's last id when the next slice may hold more (None: stop)."""
    async with engine.begin() as conn:
        row = (await conn.execute(_PRUNE, {"after": after, "before": before, "n": slice_rows})).one()
    return row.deleted, row.last if row.deleted == row.seen == slice_rows else None
