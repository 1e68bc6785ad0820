"""Applies a batch of events in one transaction: load and lock, run the core, write everything together.

HTTP, the NATS worker and the expiry sweeper all come through `LedgerService.apply`, so every rule and
every guarantee (exactly once, outbox with the change, fixed lock order) holds for all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol, TypeVar

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics, tracing
from stocksync.adapters.faults import DATABASE_ERRORS, collided, passing_fault
from stocksync.adapters.ledger_store import ConcurrentWrite, PostgresLedgerStore
from stocksync.aio import Gathering, settle
from stocksync.clock import Clock, utc_now
from stocksync.domain.errors import Unavailable
from stocksync.domain.events import Command, encode
from stocksync.domain.ledger import Changes, HeldLine, Ledger, Loaded
from stocksync.domain.model import (
    Outcome,
    Position,
    PositionKey,
    Reservation,
    ReservationKey,
)
from stocksync.metrics import Stages
from stocksync.service.outbox import outbox_rows

log = structlog.get_logger("stocksync.ledger")
T = TypeVar("T")


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcomes in event order, and the reservations and positions as the batch committed them."""

    outcomes: list[Outcome]
    reservations: dict[ReservationKey, Reservation]
    positions: dict[PositionKey, Position]


def body_hash(event: Command) -> bytes:
    """Hash of the canonical body, so a re-serialised repeat of the same event is not a conflict."""
    return hashlib.sha256(encode(event)).digest()


class LedgerBatch(Protocol):
    """One batch's transaction on a ledger store."""

    async def load(self, events: Sequence[Command], now: datetime) -> Loaded:
        """Lock (in the global order) and read every position and reservation the batch may change."""

    async def held(self, keys: set[PositionKey]) -> Mapping[PositionKey, Sequence[HeldLine]]:
        """The stored holds of these positions, for naming the reservations a batch put at risk."""

    async def write(self, changes: Changes, outbox: list[dict]) -> None:
        """The batch's record and its outbox rows, together (nothing is published unless this commits)."""


class LedgerStore(Protocol):
    """Where the ledger lives: `PostgresLedgerStore`, or `MemoryLedgerStore` for the core's scenarios."""

    def transaction(self) -> AbstractAsyncContextManager[LedgerBatch]: ...

    async def answers(self) -> bool: ...


class LedgerService:
    """One batch, one transaction: load and lock, apply in the core, write the core's record once.

    ``store``: where the ledger lives (`PostgresLedgerStore` over ``engine`` by default; `MemoryLedgerStore`
    runs the same path with no database)."""

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        store: LedgerStore | None = None,
        clock: Clock = utc_now,
        retries: int = 10,
    ) -> None:
        if store is None:
            assert engine is not None, "a LedgerService needs an engine or a store"
            store = PostgresLedgerStore(engine)
        self.store = store
        self.clock = clock
        self.retries = retries

    async def apply(self, events: Sequence[Command]) -> BatchResult:
        """Apply the batch exactly once per event; retried whole when a concurrent create or deadlock hits it.

        Raises `Unavailable` for a passing fault (the database unreachable or gone mid-transaction): nothing
        was applied, and the same batch may be tried again later.
        """
        hashes = [body_hash(event) for event in events]
        return await self.retrying(lambda: self._apply_once(events, hashes))

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt`` (one transaction) until it commits: again on a concurrent create or a deadlock;
        `Unavailable` for a passing fault."""
        for tried in range(self.retries):
            try:
                return await attempt()
            except ConcurrentWrite:
                metrics.RETRIES.labels("concurrent_write").inc()
            except DATABASE_ERRORS as error:
                if collided(error):
                    metrics.RETRIES.labels("deadlock").inc()
                elif passing_fault(error):
                    raise Unavailable(f"the database is unreachable: {type(error).__name__}") from error
                else:
                    raise
            await asyncio.sleep(0.002 * 2**tried)
        raise Unavailable("the batch kept colliding with concurrent writers; retry later")

    async def database_answers(self, timeout_s: float = 2.0) -> bool:
        """Whether the store runs a query now (a pooled connection included): tells an event that fails
        from a database that fails, when the error's type does not say."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.store.answers()
        except Exception:  # whatever stops the probe, the database does not answer
            return False

    async def _apply_once(self, events: Sequence[Command], hashes: list[bytes]) -> BatchResult:
        started = time.perf_counter()
        now = self.clock()
        stages = Stages(metrics.TRANSACTION_STAGE_SECONDS, started)
        with tracing.span("ledger.transaction", events=len(events)):
            async with self.store.transaction() as batch:
                changes = await apply_in(batch, events, hashes, now, stages)
                rows = traced(outbox_rows(changes))
                await batch.write(changes, rows)  # the batch's one write: every table, the outbox
                stages.done("write")
        stages.done("commit")
        self._observe(changes, len(events), stages.at - started)
        return BatchResult(
            outcomes=list(changes.outcomes),
            reservations=changes.reservations,
            positions=changes.all_positions,
        )

    def _observe(self, changes: Changes, size: int, seconds: float) -> None:
        by_type = Counter((outcome.type, outcome.outcome) for outcome in changes.outcomes)
        counts: dict[str, int] = {"applied": 0, "duplicate": 0, "rejected": 0}
        for (type_, kind), n in by_type.items():  # one metric update per kind, not per event
            counts[kind] += n
            metrics.EVENTS.labels(type_, kind).inc(n)
        metrics.BATCH_SIZE.observe(size)
        metrics.TRANSACTION_SECONDS.observe(seconds)
        log.info(
            "batch_applied",
            events=size,
            movements=len(changes.movements),
            ms=round(seconds * 1000, 2),
            **counts,
        )


def traced(rows: list[dict]) -> list[dict]:
    """Outbox rows with the transaction's trace, for the relay to continue (while tracing is on)."""
    parent = tracing.current_traceparent()
    return [{**row, "traceparent": parent} for row in rows] if parent else rows


async def apply_in(
    batch: LedgerBatch,
    events: Sequence[Command],
    hashes: Sequence[bytes],
    now: datetime,
    stages: Stages | None = None,
) -> Changes:
    """Load and lock what the events touch, apply them in the core, and return its record (not written)."""
    ledger = Ledger.of(await batch.load(events, now))
    if stages:
        stages.done("load")
    for event, digest in zip(events, hashes, strict=True):
        ledger.apply(event, digest)
    at_risk = ledger.positions_at_risk()  # naming the holds needs them: read only then
    changes = ledger.changes(await batch.held(at_risk) if at_risk else {})
    if stages:
        stages.done("apply")
    return changes


class GroupCommitLedger(LedgerService):
    """Group commit for request-at-a-time callers (HTTP): while one transaction commits, the requests that
    arrive meanwhile gather and then share the next one, so a burst of reservations costs a few transactions
    instead of one each. The core applies the gathered events in arrival order, exactly as one at a time.
    A shared batch that fails for any reason but a passing fault is retried request by request, so one bad
    request never fails the others.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now, max_events: int = 500) -> None:
        super().__init__(engine, clock=clock)
        self._gathering: Gathering[Sequence[Command], BatchResult] = Gathering(self._commit, len, max_events)

    async def apply(self, events: Sequence[Command]) -> BatchResult:
        return await self._gathering(events)

    async def _commit(self, group: Group) -> None:
        try:
            result = await super().apply([event for events, _ in group for event in events])
        except Unavailable:
            raise  # a passing fault: every request of the group gets it (`Gathering`), none is tried alone
        except Exception:
            await self._one_by_one(group)
        else:
            start = 0
            for events, future in group:
                outcomes = result.outcomes[start : start + len(events)]
                start += len(events)
                settle(future, msgspec.structs.replace(result, outcomes=outcomes))

    async def _one_by_one(self, group: Group) -> None:
        for events, future in group:
            try:
                settle(future, await super().apply(events))
            except Exception as error:
                settle(future, error)


Group = list[tuple[Sequence[Command], asyncio.Future[BatchResult]]]
