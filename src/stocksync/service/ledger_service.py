"""Applies a batch of events in one transaction: load and lock, run the core, write everything together.

HTTP, the NATS worker and the expiry sweeper all come through `LedgerService.apply`, so every rule and
every guarantee (exactly once, outbox with the change, fixed lock order) holds for all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync import metrics
from stocksync.adapters import ledger_store as store
from stocksync.adapters.database import answers
from stocksync.adapters.faults import DATABASE_ERRORS, collided, passing_fault
from stocksync.clock import Clock, utc_now
from stocksync.domain.errors import Unavailable
from stocksync.domain.events import INBOUND_TYPES, Command, Count, SetSafetyStock, encode
from stocksync.domain.ledger import Ledger, reservations_at_risk
from stocksync.domain.model import (
    Alert,
    Location,
    Outcome,
    Position,
    PositionKey,
    Reservation,
    ReservationKey,
)
from stocksync.service.outbox import outbox_rows

log = structlog.get_logger("stocksync.ledger")


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcomes in event order, and the reservations and positions as the batch committed them."""

    outcomes: list[Outcome]
    reservations: dict[ReservationKey, Reservation]
    positions: dict[PositionKey, Position]


def body_hash(event: Command) -> bytes:
    """Hash of the canonical body, so a re-serialised repeat of the same event is not a conflict."""
    return hashlib.sha256(encode(event)).digest()


def _reservation_keys(events: Sequence[Command]) -> set[ReservationKey]:
    """The reservations a batch names, each at its event's location (a reservation is both)."""
    return {(e.location_id, e.reservation_id) for e in events if hasattr(e, "reservation_id")}


def _touched_keys(
    events: Sequence[Command], reservations: dict[ReservationKey, Reservation]
) -> set[PositionKey]:
    keys: set[PositionKey] = set()
    for event in events:
        if isinstance(event, SetSafetyStock):
            keys.add((event.location_id, event.sku))
        for line in getattr(event, "lines", ()):
            keys.add((event.location_id, line.sku))
        reservation = reservations.get((event.location_id, getattr(event, "reservation_id", "")))
        if reservation is not None:
            keys.update((reservation.location_id, line.sku) for line in reservation.lines)
    return keys


class LedgerService:
    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now, retries: int = 10) -> None:
        self.engine = engine
        self.clock = clock
        self.retries = retries
        # The rules only ask whether a location exists, and locations are never deleted: once read, one is
        # known for good, and a batch reads only the locations it has not seen (usually none).
        self._locations: dict[str, Location] = {}

    async def apply(self, events: Sequence[Command]) -> BatchResult:
        """Apply the batch exactly once per event; retried whole when a concurrent create or deadlock hits it.

        Raises `Unavailable` for a passing fault (the database unreachable or gone mid-transaction): nothing
        was applied, and the same batch may be tried again later.
        """
        hashes = [body_hash(event) for event in events]
        for attempt in range(self.retries):
            try:
                return await self._apply_once(events, hashes)
            except store.ConcurrentWrite:
                metrics.RETRIES.labels("concurrent_write").inc()
            except DATABASE_ERRORS as error:
                if collided(error):
                    metrics.RETRIES.labels("deadlock").inc()
                elif passing_fault(error):
                    raise Unavailable(f"the database is unreachable: {type(error).__name__}") from error
                else:
                    raise
            await asyncio.sleep(0.002 * 2**attempt)
        raise Unavailable("the batch kept colliding with concurrent writers; retry later")

    async def database_answers(self, timeout_s: float = 2.0) -> bool:
        """Whether the database runs a query now (a pooled connection included): tells an event that fails
        from a database that fails, when the error's type does not say."""
        try:
            async with asyncio.timeout(timeout_s):
                return await answers(self.engine)
        except Exception:  # whatever stops the probe, the database does not answer
            return False

    async def _apply_once(self, events: Sequence[Command], hashes: list[bytes]) -> BatchResult:
        started = time.perf_counter()
        now = self.clock()
        async with self.engine.begin() as conn:
            ledger, stored = await self._load(conn, events, now)
            for event, digest in zip(events, hashes, strict=True):
                ledger.apply(event, digest)
            changes = store.changes(ledger, stored, now)
            if any(alert.kind == "reservation_at_risk" for alert in ledger.alerts):
                await changes.write(conn)  # the alert names the held reservations as the batch leaves them
                changes = store.Changes()
            changes.outbox(outbox_rows(ledger, await self._alerts(conn, ledger), now))
            await changes.write(conn)  # usually the batch's one write: every table and the outbox at once
        self._observe(ledger, len(events), time.perf_counter() - started)
        return BatchResult(
            outcomes=ledger.outcomes, reservations=ledger.reservations, positions=ledger.positions
        )

    async def _load(
        self, conn: AsyncConnection, events: Sequence[Command], now: datetime
    ) -> tuple[Ledger, set[PositionKey]]:
        reservations = await store.lock_reservations(conn, _reservation_keys(events))
        locations = await self._known_locations(conn, {e.location_id for e in events})
        positions = await store.lock_positions(conn, _touched_keys(events, reservations))
        recorded = await store.load_recorded(
            conn, [(e.location_id, e.event_id) for e in events if e.type in INBOUND_TYPES]
        )
        probes = [
            ((e.location_id, ln.sku), e.occurred_at) for e in events if isinstance(e, Count) for ln in e.lines
        ]
        after = await store.on_hand_after(conn, probes)
        ledger = Ledger(
            now=now,
            locations=locations,
            positions=positions,
            reservations=reservations,
            recorded=recorded,
            stored_on_hand_after=lambda key, when: after.get((key, when), 0),
        )
        return ledger, set(positions)

    async def _known_locations(self, conn: AsyncConnection, location_ids: set[str]) -> dict[str, Location]:
        if unseen := location_ids - self._locations.keys():
            self._locations.update(await store.load_locations(conn, unseen))
        return {lid: self._locations[lid] for lid in location_ids if lid in self._locations}

    async def _alerts(self, conn: AsyncConnection, ledger: Ledger) -> list[Alert]:
        """Name the reservations a fact put at risk (rule 4), from the held lines as the batch leaves them."""
        at_risk = [a for a in ledger.alerts if a.kind == "reservation_at_risk"]
        if not at_risk:
            return ledger.alerts
        held = await store.held_by_position(conn, [(a.location_id, a.sku) for a in at_risk])
        return [
            msgspec.structs.replace(
                alert,
                reservation_ids=reservations_at_risk(
                    alert.on_hand, held.get((alert.location_id, alert.sku), [])
                ),
            )
            if alert.kind == "reservation_at_risk"
            else alert
            for alert in ledger.alerts
        ]

    def _observe(self, ledger: Ledger, size: int, seconds: float) -> None:
        by_type = Counter((outcome.type, outcome.outcome) for outcome in ledger.outcomes)
        counts: dict[str, int] = {"applied": 0, "duplicate": 0, "rejected": 0}
        for (type_, kind), n in by_type.items():  # one metric update per kind, not per event
            counts[kind] += n
            metrics.EVENTS.labels(type_, kind).inc(n)
        metrics.BATCH_SIZE.observe(size)
        metrics.TRANSACTION_SECONDS.observe(seconds)
        log.info(
            "batch_applied",
            events=size,
            movements=len(ledger.movements),
            ms=round(seconds * 1000, 2),
            **counts,
        )


class GroupCommitLedger(LedgerService):
    """Group commit for request-at-a-time callers (HTTP): while one transaction commits, the requests that
    arrive meanwhile gather and then share the next one, so a burst of reservations costs a few transactions
    instead of one each. The core applies the gathered events in arrival order, exactly as one at a time.
    A shared batch that fails for any reason but a passing fault is retried request by request, so one bad
    request never fails the others.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now, max_events: int = 500) -> None:
        super().__init__(engine, clock=clock)
        self.max_events = max_events
        self._waiting: list[tuple[Sequence[Command], asyncio.Future[BatchResult]]] = []
        self._committer: asyncio.Task | None = None

    async def apply(self, events: Sequence[Command]) -> BatchResult:
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        while self._waiting:
            group = self._take_group()
            try:
                result = await super().apply([event for events, _ in group for event in events])
            except Unavailable as error:
                _fail(group, error)
            except Exception:
                await self._one_by_one(group)
            else:
                _answer(group, result)

    def _take_group(self) -> list[tuple[Sequence[Command], asyncio.Future[BatchResult]]]:
        size, taken = 0, 0
        while taken < len(self._waiting) and (
            taken == 0 or size + len(self._waiting[taken][0]) <= self.max_events
        ):
            size += len(self._waiting[taken][0])
            taken += 1
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group

    async def _one_by_one(self, group: list[tuple[Sequence[Command], asyncio.Future[BatchResult]]]) -> None:
        for events, future in group:
            try:
                future.set_result(await super().apply(events))
            except Exception as error:
                future.set_exception(error)


def _answer(group: list[tuple[Sequence[Command], asyncio.Future[BatchResult]]], result: BatchResult) -> None:
    start = 0
    for events, future in group:
        outcomes = result.outcomes[start : start + len(events)]
        start += len(events)
        future.set_result(msgspec.structs.replace(result, outcomes=outcomes))


def _fail(group: list[tuple[Sequence[Command], asyncio.Future[BatchResult]]], error: Exception) -> None:
    for _, future in group:
        future.set_exception(error)
