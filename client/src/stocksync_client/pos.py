"""A till's client: each sale or return is written to a durable local spool before it is sent, and leaves
the spool only when the ledger's outcome for it arrives on ``stocksync.out.outcome.<location_id>``.

Why the outcome and not JetStream's publish ack: the ack says the stream took the message, not that a disk
holds it (JetStream syncs every two minutes by default; Jepsen lost acknowledged writes of NATS 2.12 that
way). The outcome is published by the ledger after its commit. Re-sending is harmless (the ledger applies an
event_id once, for ever), so whatever has no outcome after a while is sent again, in spool order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from stocksync_client.aio import cancel_and_wait, pause, quietly
from stocksync_client.connection import connect
from stocksync_client.spool import Cursor, RejectedEvent, Spool, SpooledEvent
from stocksync_contract.events import ID_PATTERN, InboundEvent, QtyLine, Return, ReturnLine, Sale
from stocksync_contract.messages import OutcomeMessage
from stocksync_contract.wire import OUT_STREAM, key_options, outcome_subject

log = logging.getLogger("stocksync_client.pos")
T = TypeVar("T")
Disposition = Literal["restock", "damaged"]
_ID = re.compile(ID_PATTERN)
_decode_outcome = msgspec.json.Decoder(OutcomeMessage).decode


class PosClient:
    """One till. Selling never waits for NATS; a background forwarder sends the spool in order when it can.

    Open with `PosClient.open`; each till needs a spool of its own (it is locked while open). A re-send reaches
    the ledger, so an event whose outcome alone was lost is answered ``duplicate``. Sends carry no
    ``Nats-Msg-Id``: the stream de-duplicates by it across every store, and a till's ids are predictable, so
    another store's till could otherwise have this till's next sale dropped (rule 10).
    """

    def __init__(
        self,
        spool: Spool,
        executor: ThreadPoolExecutor,
        nats_url: str,
        *,
        api_key: str | None,
        resend_after_s: float,
        window: int,
        on_outcome: Callable[[OutcomeMessage], Any] | None,
    ) -> None:
        self.location_id, self.till_id = spool.location_id, spool.till_id
        self.source = f"pos:{self.location_id}:{self.till_id}"
        self.nats_url = nats_url
        self._key_options = key_options(api_key)
        self.resend_after_s = resend_after_s
        self.window = window
        self.on_outcome = on_outcome
        self._spool = spool
        self._executor = executor
        self._prefix = f"{self.location_id}:{self.till_id}:"
        self._pending = 0
        self._sent: dict[int, float] = {}  # seq -> when last published (monotonic)
        self._stream = ""  # the creation time of the outcome stream being read
        self._drained, self._wake, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._connected, self._listening = asyncio.Event(), asyncio.Event()
        self._task: asyncio.Task | None = None
        self._nc: Client | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        nats_url: str,
        location_id: str,
        till_id: str,
        spool_path: str | Path,
        *,
        api_key: str | None = None,
        resend_after_s: float = 30.0,
        window: int = 1000,
        on_outcome: Callable[[OutcomeMessage], Any] | None = None,
    ) -> PosClient:
        """Open (or create) the till's spool and start forwarding; returns at once, even with NATS down.

        ``resend_after_s``: how long an event waits for its outcome before it is sent again. ``window``: how
        many events may be out without an outcome. ``on_outcome``: called once per event leaving the spool.
        ``api_key``: the store's pos key, the NATS connection's token (needed where NATS access is on).
        """
        for name, value in (("location_id", location_id), ("till_id", till_id)):
            if not _ID.fullmatch(value):
                raise ValueError(f"{name} {value!r} does not match {ID_PATTERN}")
        if (
            len(f"{location_id}:{till_id}:") + 10 > 128
        ):  # room for a ten-digit sequence in a 128-char event_id
            raise ValueError("location_id and till_id are too long together for event ids")
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"spool-{till_id}")
        try:
            spool = await asyncio.get_running_loop().run_in_executor(
                executor, Spool, spool_path, location_id, till_id
            )
        except BaseException:
            executor.shutdown()
            raise
        client = cls(
            spool,
            executor,
            nats_url,
            api_key=api_key,
            resend_after_s=resend_after_s,
            window=window,
            on_outcome=on_outcome,
        )
        client._set_pending(await client._call(spool.count))
        client._task = asyncio.create_task(client._run(), name=client.source)
        return client

    async def __aenter__(self) -> PosClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- what the till does ----------------------------------------------------------------------------------

    async def sell(
        self, lines: Iterable[QtyLine], *, reference: str | None = None, occurred_at: datetime | None = None
    ) -> str:
        """Record a sale; returns its event_id once it is on disk, whether or not NATS is reachable."""
        return await self._record(functools.partial(Sale, lines=list(lines)), reference, occurred_at)

    async def return_(
        self,
        lines: Iterable[QtyLine | ReturnLine],
        *,
        disposition: Disposition = "restock",
        reference: str | None = None,
        occurred_at: datetime | None = None,
    ) -> str:
        """Record a return; ``disposition`` applies to the lines given as `QtyLine`."""
        returned = [
            ReturnLine(sku=ln.sku, qty=ln.qty, disposition=disposition) if isinstance(ln, QtyLine) else ln
            for ln in lines
        ]
        return await self._record(functools.partial(Return, lines=returned), reference, occurred_at)

    def pending(self) -> int:
        """Events in the spool: recorded here, their outcome not yet received."""
        return self._pending

    async def wait_until_drained(self, timeout: float) -> None:
        """Wait until every recorded event has its outcome; TimeoutError otherwise."""
        await asyncio.wait_for(self._drained.wait(), timeout)

    async def rejected(self) -> list[RejectedEvent]:
        return await self._call(self._spool.rejected)

    async def close(self) -> None:
        """Stop forwarding and close the spool; what is still pending is sent by the next `open`."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._nc is not None:
            await quietly(self._nc.close())
        await self._call(self._spool.close)
        self._executor.shutdown()

    async def _record(
        self, make: Callable[..., InboundEvent], reference: str | None, occurred_at: datetime | None
    ) -> str:
        if self._closed:
            raise RuntimeError("the till's client is closed")
        fields = dict(
            location_id=self.location_id,
            occurred_at=occurred_at or datetime.now(UTC),
            source=self.source,
            reference=reference,
        )
        event_id, pending = await self._call(self._spool.append, lambda eid: make(event_id=eid, **fields))
        self._set_pending(pending)
        self._wake.set()
        return event_id

    def _set_pending(self, count: int) -> None:
        self._pending = count
        if count == 0:
            self._drained.set()
        else:
            self._drained.clear()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    # -- in the background -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Run the listener and the forwarder on one connection; connect again when the server closes it,
        as it does when the key's authorisation expires (docs/reliability.md, "Access to NATS")."""
        while not self._stop.is_set():
            closed = asyncio.Event()
            self._nc = nc = await self._connect(closed)
            parts = [
                asyncio.create_task(self._supervise("listener", self._listen, nc)),
                asyncio.create_task(self._supervise("forwarder", self._forward, nc)),
            ]
            ended = [asyncio.create_task(self._stop.wait()), asyncio.create_task(closed.wait())]
            try:
                await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled too: both parts end before close() closes the connection
                for task in [*parts, *ended]:
                    await cancel_and_wait(task)
            await quietly(nc.close())

    async def _connect(self, closed: asyncio.Event) -> Client:
        """Keep trying until NATS answers (the till may start while it is down, or its key be refused for a
        while); then nats-py reconnects, until the server closes the connection (``closed`` is set)."""

        async def on_error(error: Exception) -> None:
            log.debug("nats_error till=%s error=%s: %s", self.source, type(error).__name__, error)

        async def on_disconnected() -> None:
            self._connected.clear()

        async def on_reconnected() -> None:
            self._connected.set()

        async def on_closed() -> None:
            self._connected.clear()
            closed.set()

        while True:
            try:
                nc = await connect(
                    self.nats_url,
                    name=self.source,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    closed_cb=on_closed,
                    **self._key_options,
                )
            except (NatsError, OSError) as error:
                log.info("nats_unreachable till=%s error=%s: %s", self.source, type(error).__name__, error)
                await pause(self._stop, 1.0)
                continue
            self._connected.set()
            return nc

    async def _supervise(self, name: str, part: Callable[[Client], Awaitable[None]], nc: Client) -> None:
        """Run ``part`` until closed: NATS faults pass; anything else is logged, never silently ends it."""
        while not self._stop.is_set():
            try:
                await part(nc)
            except (NatsError, OSError) as error:  # OSError includes TimeoutError
                error_name = type(error).__name__
                log.info("%s_interrupted till=%s error=%s: %s", name, self.source, error_name, error)
            except Exception:
                log.exception("%s_failed till=%s", name, self.source)
            await pause(self._stop, 0.5)

    async def _listen(self, nc: Client) -> None:
        """Read this location's outcomes and settle the spool with those of this till."""
        self._listening.clear()
        await self._connected.wait()
        sub = await self._subscribe(nc.jetstream())
        self._listening.set()
        self._wake.set()
        try:
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(256, timeout=5.0)
                except TimeoutError:  # no outcome yet; a consumer lost with a NATS restart answers 404 here
                    await sub.consumer_info()
                    continue
                await self._settle(msgs)
        finally:
            self._listening.clear()
            await quietly(sub.unsubscribe())

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """An ephemeral consumer from the first outcome this till has not read, even before a restart."""
        empty = await self._call(self._spool.count) == 0
        info = await js.stream_info(OUT_STREAM)
        self._stream = stream = info.created.isoformat() if info.created else ""
        cursor = await self._call(self._spool.cursor)
        if cursor is None or empty:  # nothing sent awaits an outcome: only outcomes from now on concern it
            start = info.state.last_seq + 1
            await self._call(self._spool.reset_cursor, Cursor(stream, info.state.last_seq))
        elif cursor.stream != stream:  # the stream was re-created since: read all of it
            start = max(info.state.first_seq, 1)
        else:
            start = cursor.seq + 1
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
            description=f"outcomes for {self.source}",
        )
        subject = outcome_subject(self.location_id)
        return await js.pull_subscribe(subject, stream=OUT_STREAM, config=config)

    async def _settle(self, msgs: Sequence[Msg]) -> None:
        """Settle this till's events; other tills' outcomes only move the cursor, which need not be stored."""
        mine = []
        for msg in msgs:
            try:
                outcome = _decode_outcome(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                log.warning("outcome_unreadable till=%s error=%s", self.source, error)
                continue
            if outcome.event_id.startswith(self._prefix):
                mine.append(outcome)
        if not mine:
            return
        cursor = Cursor(self._stream, msgs[-1].metadata.sequence.stream)
        settled, pending = await self._call(self._spool.settle, mine, cursor)
        self._set_pending(pending)
        self._wake.set()
        for outcome in settled:
            if outcome.outcome == "rejected":
                log.warning("event_rejected event_id=%s error=%s", outcome.event_id, outcome.error)
            if self.on_outcome is not None:
                self.on_outcome(outcome)

    async def _forward(self, nc: Client) -> None:
        """Send the spool in sequence order: what was never sent, and what waited too long for its outcome."""
        js = nc.jetstream()
        while not self._stop.is_set():
            await self._listening.wait()  # never send what this till could not hear the outcome of
            await self._connected.wait()
            self._wake.clear()
            rows = await self._call(self._spool.unsettled, self.window)
            now = time.monotonic()  # what was sent before a restart waits for its outcome from now on
            sent = self._sent
            self._sent = {r.seq: sent.get(r.seq, now) for r in rows if r.published or r.seq in sent}
            first_sends = await self._send_due(js, rows)
            if first_sends:
                await self._call(self._spool.mark_published, first_sends)
            oldest = min(self._sent.values(), default=time.monotonic())
            await pause(self._stop, max(0.05, oldest + self.resend_after_s - time.monotonic()), self._wake)

    async def _send_due(self, js: JetStreamContext, rows: Sequence[SpooledEvent]) -> list[int]:
        """Publish, in order, the rows never sent or sent too long ago; the seqs of the first sends."""
        first_sends = []
        for row in rows:
            last = self._sent.get(row.seq)
            if last is not None and time.monotonic() - last < self.resend_after_s:
                continue
            if not (self._listening.is_set() and self._connected.is_set()):
                break
            await js.publish(row.subject, row.body, timeout=5.0)
            self._sent[row.seq] = time.monotonic()
            if last is None:
                first_sends.append(row.seq)
            else:
                log.info("event_resent event_id=%s waited_s=%.1f", row.event_id, self._sent[row.seq] - last)
        return first_sends
