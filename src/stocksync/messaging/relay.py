"""The outbox relay: publishes every committed change, at least once, in commit order per position.

Rows are read and marked through `adapters.outbox`. One relay leads at a time, by a PostgreSQL advisory lock
held on its own session; the others wait to take over, so several may run without reordering a position's
updates. The lock is let go on every way out of leading (or its session closed), and the leader watches that
session beside its passes: when it dies (a standby may hold the lock by then) the leader stops at once. The
leader wakes on NOTIFY from the committing transaction, and polls as a fallback.

Each position's availability (and each channel entry) is published once, to STOCKSYNC_OUT, which the KV
buckets source (`messaging.topology`). It is stored only at the subject's sequence the relay last saw
(`adapters.bucket.NewestOnly`), never after a newer ``version``: a deposed leader's late publish is refused.
An entry that is not an availability body counts as older than any.

A pass pipelines its publishes: every row is sent in id order on one connection, then all acknowledgements are
awaited together (one round trip per pass, not per message). One connection delivers in send order, so the
stream stores each subject's rows in commit order; a pass with a failed publish is sent again whole:
``Nats-Msg-Id`` drops the rows that had been stored, and a versioned row acknowledged (or found there, or
newer) is not sent again (nats-server checks the expected sequence before the message id, so a stored one sent
again with its old expectation is refused, and then found there by the read). A pass whose only failures are
refused expectations is sent again at once, a few times: those subjects are read anew. A leader's pass marks
the rows of the pass before in its own read (one statement), so no pass waits for a mark of its own.

Channels (spec section 7) are published by the pass too: after reading its rows, the pass reads which channel
skus those positions belong to, and publishes what each may sell beside them under one fresh version (a
sequence), so a channel's entry is never later than the positions it sums, several commits of a pass cost
one message per channel sku, and a pass sent again publishes a newer version, never an older one. The sums are
made from the positions as the leader has relayed them (`ChannelStock`: every availability row carries its
position's new state and version), read from the database only the first time one is needed; a new leader starts
from the database again. An entry is therefore exactly the positions whose updates are published by then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import APIError
from opentelemetry.trace import SpanKind
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync import metrics, tracing
from stocksync.adapters import channels, outbox
from stocksync.adapters.bucket import EXPECTED_SUBJECT_SEQ, SKIP, WRONG_LAST_SEQUENCE, NewestOnly
from stocksync.adapters.channels import ChannelRefresh, ChannelStock
from stocksync.adapters.pipeline import Pipeline
from stocksync.aio import cancel_and_wait, pause
from stocksync.clock import utc_now
from stocksync.domain.events import decoder
from stocksync.domain.model import Position
from stocksync.logs import outline
from stocksync.metrics import Stages
from stocksync.service.outbox import Publication, channel_publications
from stocksync.wire import BUCKET_SOURCES, CHANNEL_REFRESH, MSG_ID, OUT_STREAM, split_availability_key

log = structlog.get_logger("stocksync.relay")
_decode_refresh = decoder(ChannelRefresh)


# An availability row's payload as the position it carries (`available` and `as_of` left out).
_decode_position = msgspec.json.Decoder(Position).decode
_REFUSED_TRIES = 4  # a pass sent again at once while only expectations were refused (each read anew)


class NotSourcing(NatsError):
    """A bucket's stream does not source the out stream yet: the relay publishes nothing until migrated."""


# What a database or NATS that is away for a while raises; the relay logs it and tries to lead again
# (asyncpg's own errors come from the NOTIFY listener, which SQLAlchemy does not wrap).
_PASSING = (SQLAlchemyError, OSError, NatsError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError)


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        nc: Client,
        *,
        batch: int = 1000,
        catch_up_batch: int = 4000,
        poll_s: float = 0.5,
        mark_within_s: float = 0.05,
        retention: timedelta = timedelta(days=1),
        prune_every_s: float = 60.0,
        prune_slice: int = 5000,
        ack_timeout_s: float = 3.0,
        lead_check_s: float = 0.5,
        lead_check_timeout_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.nc = nc
        self.js = nc.jetstream()
        self.batch = batch
        self.catch_up_batch = max(batch, catch_up_batch)
        self._behind = False  # the last pass was full: read the bigger pass
        self.poll_s = poll_s
        self.mark_within_s = mark_within_s  # how soon an idle leader marks its last pass's rows
        self.retention = retention
        self.prune_every_s = prune_every_s
        self.prune_slice = prune_slice
        self.ack_timeout_s = ack_timeout_s
        self.lead_check_s = lead_check_s
        self.lead_check_timeout_s = lead_check_timeout_s
        self.leading = False  # this relay holds the leader lock and passes
        self._wake = asyncio.Event()
        self._notified_at: float | None = None  # the first NOTIFY since the last pass started (perf_counter)
        self._pipeline = Pipeline(nc)
        self._newest = NewestOnly(self.js)
        self._channel_stock = ChannelStock()  # the positions channels sum, as this leader relayed them
        self._channel_sent: dict[str, int] = {}  # channel entry -> the `available` this leader last published
        self._channel_locations: frozenset[str] | None = None  # the locations channels sum (None: read it)
        self._unmarked: tuple[list[int], datetime] | None = None  # published, marked by the next pass's read

    async def run(self, stop: asyncio.Event) -> None:
        sampling = asyncio.create_task(metrics.sample_every(stop, "outbox", self.sample_backlog))
        try:
            while not stop.is_set():
                try:
                    async with self._autocommit.connect() as session:
                        await self._lead_if_free(session, stop)
                except _PASSING as error:
                    log.warning("relay_interrupted", error=f"{type(error).__name__}: {error}")
                except Exception as error:  # a fault of ours must not stop the outbox for every position
                    # frames and types, not the message: it may quote an outbox payload (request content)
                    log.error("relay_failed", exception=outline(error))
                await pause(stop, 1.0)
        finally:
            await cancel_and_wait(sampling)

    async def sample_backlog(self) -> None:
        """The outbox gauges, sampled by every relay, leading or standing by: a relay that cannot lead (no
        relay can) still shows the rows piling up."""
        async with self._autocommit.connect() as conn:
            waiting, oldest_s = await outbox.backlog(conn)
        metrics.OUTBOX_LAG.set(waiting)
        metrics.OUTBOX_OLDEST.set(oldest_s)

    async def _lead_if_free(self, session: AsyncConnection, stop: asyncio.Event) -> None:
        """Take the leader lock if no one holds it, and relay until stopped, a fault, or the lock is lost.

        Everything after the lock is taken is inside the ``try``: the lock is let go on every way out, so a
        pooled connection never goes back to the pool holding it (standbys would never take over)."""
        try:
            leading = await outbox.try_lead(session)
        except BaseException:
            await session.invalidate()  # granted, perhaps, with the answer lost on the way
            raise
        if not leading:
            return
        lost = asyncio.Event()  # set the moment the lock's session is gone

        def closed(_: object) -> None:
            lost.set()

        raw = None
        try:
            raw = (await session.get_raw_connection()).driver_connection
            raw.add_termination_listener(closed)
            await raw.add_listener(outbox.OUTBOX_CHANNEL, self._notified)
            await self._require_sourcing()
            await self._relay_while_leading(session, stop, lost)
        finally:
            await self._let_go(session, raw, closed)

    async def _require_sourcing(self) -> None:
        """Publishing once is right only where the buckets source the out stream (`stocksync migrate`)."""
        for _, stream, _ in BUCKET_SOURCES.values():
            sources = (await self.js.stream_info(stream)).config.sources or []
            if not any(s.name == OUT_STREAM for s in sources):
                raise NotSourcing(f"{stream} does not source {OUT_STREAM}: run `stocksync migrate`")

    def _notified(self, *_: object) -> None:
        if self._notified_at is None:
            self._notified_at = time.perf_counter()
        self._wake.set()

    def _observe_wake(self, now: float) -> None:
        """How long the rows announced since the last pass started waited for the pass that reads them."""
        if self._notified_at is not None:
            metrics.RELAY_WAKE_SECONDS.observe(now - self._notified_at)
            self._notified_at = None

    async def _let_go(self, session: AsyncConnection, raw: Any, closed: Callable[[object], None]) -> None:
        """Unlock and stop listening; when that cannot be done, close the session (which ends the lock)."""
        try:
            if raw is not None:
                raw.remove_termination_listener(closed)
            await outbox.let_go(session)
            if raw is not None:
                await raw.remove_listener(outbox.OUTBOX_CHANNEL, self._notified)
        except BaseException as error:
            await session.invalidate()
            if not isinstance(error, Exception):
                raise
            log.warning("relay_lock_session_closed", error=f"{type(error).__name__}: {error}")

    async def _relay_while_leading(
        self, session: AsyncConnection, stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        """Passes until stopped or a pass fails, while a watch on the lock's session ends them at once if the
        lock is gone (the backend terminated, PostgreSQL restarted): a standby may hold it by then."""
        self._channel_stock.clear()  # another leader may have relayed meanwhile
        self._channel_sent.clear()  # so the first entry of each channel sku is published again
        self._channel_locations = None
        self._set_leading(True)
        log.info("relay_leading")
        over = asyncio.Event()
        passes = asyncio.create_task(self._passes(stop), name="outbox-passes")
        passes.add_done_callback(lambda _: over.set())
        # Pruning runs beside the passes, never between them: a pass must not wait behind a delete.
        pruning = asyncio.create_task(self._prune_while_leading(stop), name="outbox-prune")
        try:
            lost_lead = await self._watch_lead(session, lost, over)
        finally:
            self._set_leading(False)
            await cancel_and_wait(pruning)
            await cancel_and_wait(passes)  # already over, unless the lead was lost
        if lost_lead:
            log.warning("relay_lost_lead")
        elif not passes.cancelled():
            passes.result()  # a pass's fault, for `run` to log

    async def _passes(self, stop: asyncio.Event) -> None:
        """Each pass marks the rows of the one before in its read: a pass never waits for a mark of its own.
        Rows published and not yet marked are only sent again (dropped by ``Nats-Msg-Id``, or skipped by
        version) should the leader stop before: an idle leader marks them within ``mark_within_s``."""
        while not stop.is_set():
            self._wake.clear()
            await self.relay_once(mark_later=True)
            if not self._behind:
                await pause(stop, self.poll_s if self._unmarked is None else self.mark_within_s, self._wake)
        if self._unmarked is not None:
            async with self._autocommit.connect() as conn:
                await outbox.mark_relayed(conn, *self._unmarked)
            self._unmarked = None

    async def _watch_lead(self, session: AsyncConnection, lost: asyncio.Event, over: asyncio.Event) -> bool:
        """True as soon as the lock's session is closed, or every ``lead_check_s`` asks it and it no longer
        holds the lock (or cannot answer); False once the passes are over. The check runs on the lock's own
        session beside the passes: no round trip is added to a pass."""
        while True:
            await pause(over, self.lead_check_s, lost)
            if over.is_set():
                return False
            if lost.is_set() or not await self._holds_lock(session):
                return True

    async def _holds_lock(self, session: AsyncConnection) -> bool:
        try:
            async with asyncio.timeout(self.lead_check_timeout_s):
                return await outbox.holds_lead(session)
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            log.warning("relay_lock_check_failed", error=f"{type(error).__name__}: {error}")
            return False

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        metrics.RELAY_LEADING.set(int(leading))

    async def _prune_while_leading(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.prune()
            except (SQLAlchemyError, OSError) as error:  # the passes meet the same fault and handle it
                log.warning("prune_failed", error=f"{type(error).__name__}: {error}")
            await pause(stop, self.prune_every_s)

    async def relay_once(self, mark_later: bool = False) -> int:
        """Publish the oldest unrelayed rows in order, pipelined; then mark the rows relayed (``mark_later``:
        by the next pass's read, which marks the rows left unmarked before it reads). Each statement is its
        own transaction: only the leader marks rows. A full pass means the relay is behind: the next reads
        ``catch_up_batch`` messages, so more versions of a position fall into one pass and conflate."""
        size = self.catch_up_batch if self._behind else self.batch
        stage = Stages(metrics.RELAY_STAGE_SECONDS)
        self._observe_wake(stage.at)
        async with self._autocommit.connect() as conn:
            marking, self._unmarked = self._unmarked, None  # failed: sent again, at least once
            read = await outbox.pending(conn, size, marking)
            stage.done("read")
            self._behind, rows = read.full, read.messages
            if not rows:
                return 0
            messages = conflated(rows)
            sums = self._changed(await self._channel_sums(conn, rows))  # read after the rows: includes them
            stage.done("channels")
            # a channel's sum ahead of the positions it includes
            await self._publish([*sums, *messages], stage)
            relayed = (read.ids, utc_now())
            if mark_later:
                self._unmarked = relayed
            else:
                await outbox.mark_relayed(conn, *relayed)
                stage.done("mark")
        self._channel_sent.update((s.kv_key, s.available) for s in sums)
        metrics.RELAYED.inc(len(rows))
        return len(rows)

    async def _publish(self, rows: Sequence, stage: Stages | None = None) -> None:
        """The rows sent, and sent again at once while the only failures are expectations refused (a repair
        or a former leader published meanwhile): those subjects are read again, and what they hold already is
        not sent. Any other failure fails the pass."""
        stage = stage or Stages(metrics.RELAY_STAGE_SECONDS)
        for _ in range(_REFUSED_TRIES):
            failed = await self._send(rows, stage)
            if not failed:
                return
            if not all(isinstance(e, APIError) and e.err_code == WRONG_LAST_SEQUENCE for e in failed):
                break
        raise failed[0]

    async def _send(self, rows: Sequence, stage: Stages) -> list[BaseException]:
        """Every row but the versioned ones whose subject holds them (or newer) already; each versioned one at
        the subject's sequence it expects (`NewestOnly`), which learns what each acknowledgement left."""
        traced, publish = tracing.enabled(), self._pipeline.publish
        published, sent = [], []
        expected = await self._newest.expectations(rows)
        stage.done("expect")
        for row, seq in zip(rows, expected, strict=True):
            if seq == SKIP:
                continue
            headers = {MSG_ID: row.msg_id}
            if seq is not None:
                headers[EXPECTED_SUBJECT_SEQ] = str(seq)
            if traced:
                sent.append(await self._publish_traced(row, headers))
            else:
                sent.append(await publish(row.subject, row.payload, headers))
            published.append(row)
        acks = await self._pipeline.acknowledged(sent, self.ack_timeout_s)
        stage.done("publish")
        for row, ack in zip(published, acks, strict=True):
            if row.kv_key is not None:
                self._newest.stored(row, ack)
        return [ack for ack in acks if isinstance(ack, BaseException)]

    async def _publish_traced(self, row: Any, headers: dict[str, str]) -> asyncio.Future:
        """The row's publish as a span of the trace of the transaction that wrote it; the message carries it."""
        traceparent = getattr(row, "traceparent", None)
        if not traceparent:  # written while tracing was off, or a channel's sum: no trace to continue
            return await self.js.publish_async(row.subject, row.payload, headers=headers)
        parent = tracing.parent_of({tracing.TRACEPARENT: traceparent})
        with tracing.span("relay.publish", parent=parent, kind=SpanKind.PRODUCER, subject=row.subject):
            headers = dict(headers)
            if (carried := tracing.current_traceparent()) is not None:
                headers[tracing.TRACEPARENT] = carried
            return await self.js.publish_async(row.subject, row.payload, headers=headers)

    async def _channel_sums(self, conn: AsyncConnection, rows: Sequence) -> list[Publication]:
        """Every channel sku the pass's positions (and refresh rows) touch, as the positions are now."""
        changed = []
        for r in rows:
            if r.kv_key and (key := split_availability_key(r.kv_key)):
                changed.append(key)
                if self._channel_stock.holds(key):  # a position a channel sums: keep it as relayed
                    try:
                        self._channel_stock.saw(_decode_position(r.payload))
                    except (
                        msgspec.DecodeError,
                        msgspec.ValidationError,
                    ):  # not an availability body: read it
                        self._channel_stock.forget(key)
        refreshes = [_decode_refresh(r.payload) for r in rows if r.subject == CHANNEL_REFRESH]
        if not await self._summed_by_channels(conn, changed, refreshes):
            return []
        version, touched, positions = await channels.touched_stock(
            conn, changed, refreshes, self._channel_stock
        )
        return channel_publications(version, touched, positions, utc_now())

    async def _summed_by_channels(
        self, conn: AsyncConnection, changed: list[tuple[str, str]], refreshes: list[ChannelRefresh]
    ) -> bool:
        """Whether the pass has channel sums to read: a refresh, or a position at a location some channel sums.
        The locations are read once, and again after every pass with a refresh: a channel's locations change
        only in a transaction that also writes its refresh row, so a pass relaying a position at a location
        just added to a channel, ahead of the refresh, leaves the entry to that refresh's pass (which publishes
        every sku of the channel), as the channel read by the pass would have been older than the refresh."""
        if refreshes:
            self._channel_locations = None  # read anew by the next pass: it sees the refresh's commit
            return True
        if self._channel_locations is None:
            self._channel_locations = await channels.channel_locations(conn)
        return any(location in self._channel_locations for location, _ in changed)

    def _changed(self, sums: list[Publication]) -> list[Publication]:
        """The channel entries whose ``available`` differs from what this leader last published for them
        (remembered only once a pass is through, forgotten when leading starts: never a first one lost)."""
        if len(self._channel_sent) > self._channel_stock.max_keys:
            self._channel_sent.clear()
        return [s for s in sums if self._channel_sent.get(s.kv_key) != s.available]

    async def prune(self) -> int:
        """Delete the rows relayed longer ago than the retention, a slice per transaction; returns how many
        (the rows stay a while for `reconcile` and for an operator tracing a message)."""
        pruned, after, before = 0, 0, utc_now() - self.retention
        while after is not None:
            deleted, after = await outbox.prune(self.engine, before, self.prune_slice, after)
            pruned += deleted
        return pruned


def conflated(rows: Sequence) -> list:
    """The pass's rows to publish (spec section 3, conflation): of a position's availability rows only the
    newest version, sent in the place of its oldest, so it still precedes the outcomes of every event it
    includes; every other row as it is, in id order; refresh rows are not published."""
    newest: dict[str, Any] = {}
    for row in rows:
        if row.kv_key is not None and row.version > getattr(newest.get(row.kv_key), "version", -1):
            newest[row.kv_key] = row
    sent: list = []
    placed: set[str] = set()
    for row in rows:
        if row.kv_key is None:
            if row.subject != CHANNEL_REFRESH:
                sent.append(row)
        elif row.kv_key not in placed:
            placed.add(row.kv_key)
            sent.append(newest[row.kv_key])
    return sent


async def relay_all(engine: AsyncEngine, nc: Client) -> bool:
    """Publish every unrelayed row now under the leader lock (`reconcile --repair`); False when a running
    relay holds the lock, which it then does itself."""
    async with outbox.leading(engine) as lead:
        if not lead:
            return False
        relay = OutboxRelay(engine, nc)
        await relay._require_sourcing()
        while await relay.relay_once() and relay._behind:
            pass
        return True
