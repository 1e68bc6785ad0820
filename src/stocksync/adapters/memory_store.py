"""The ledger in memory, behind the same store interface as PostgreSQL's: the application's path and the
core's scenarios run with no database. It keeps what the tables keep and applies no rule (every rule is the
core's); a transaction's write is kept only when it ends without an error, and one runs at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from stocksync.domain.events import INBOUND_TYPES, Command
from stocksync.domain.ledger import (
    Changes,
    HeldLine,
    Loaded,
    count_probes,
    holds,
    on_hand_since,
    position_keys,
    reservation_keys,
)
from stocksync.domain.model import (
    EventKey,
    Location,
    Movement,
    Position,
    PositionKey,
    RecordedEvent,
    Reservation,
    ReservationKey,
)


class MemoryLedgerStore:
    def __init__(self, locations: Iterable[Location] = ()) -> None:
        self.locations = {location.location_id: location for location in locations}
        self.positions: dict[PositionKey, Position] = {}
        self.reservations: dict[ReservationKey, Reservation] = {}
        self.recorded: dict[EventKey, RecordedEvent] = {}
        self.movements: list[Movement] = []
        self.outbox: list[dict] = []
        self._one_at_a_time = asyncio.Lock()

    async def answers(self) -> bool:
        return True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryBatch]:
        async with self._one_at_a_time:
            batch = MemoryBatch(self)
            yield batch
            for changes, outbox in batch.written:
                self.keep(changes, outbox)

    # -- what a batch reads and keeps, also for stepping through the core by hand -----------------------

    def load_now(self, events: Sequence[Command] | None, now: datetime) -> Loaded:
        """What a batch of ``events`` finds; None: everything (a working set over the whole ledger)."""
        since: Mapping[tuple[PositionKey, datetime], int]
        if events is None:
            reservations, positions, recorded = self.reservations, self.positions, self.recorded
            locations, since = self.locations, _OnHandSince(self.movements)
        else:
            reservations = _pick(self.reservations, reservation_keys(events))
            positions = _pick(self.positions, position_keys(events, reservations))
            inbound = {(e.location_id, e.event_id) for e in events if e.type in INBOUND_TYPES}
            recorded = _pick(self.recorded, inbound)
            locations = _pick(self.locations, {e.location_id for e in events})
            since = {(k, when): on_hand_since(self.movements, k, when) for k, when in count_probes(events)}
        return Loaded(
            now=now,
            locations=dict(locations),
            positions=dict(positions),
            reservations=dict(reservations),
            recorded=dict(recorded),
            on_hand_since=since,
        )

    def held_now(self, keys: Iterable[PositionKey]) -> dict[PositionKey, list[HeldLine]]:
        keys, held = set(keys), {}
        for key, line in holds(self.reservations.values()):
            if key in keys:
                held.setdefault(key, []).append(line)
        return held

    def keep(self, changes: Changes, outbox: Sequence[dict] = ()) -> None:
        self.positions.update((p.key, p) for p in changes.positions)
        reservations = (*changes.new_reservations, *changes.settled_reservations)
        self.reservations.update((r.key, r) for r in reservations)
        self.recorded.update(((r.outcome.location_id, r.outcome.event_id), r) for r in changes.records)
        self.movements.extend(changes.movements)
        self.outbox.extend(outbox)


class MemoryBatch:
    def __init__(self, store: MemoryLedgerStore) -> None:
        self.store = store
        self.written: list[tuple[Changes, list[dict]]] = []

    async def load(self, events: Sequence[Command], now: datetime) -> Loaded:
        return self.store.load_now(events, now)

    async def held(self, keys: set[PositionKey]) -> dict[PositionKey, list[HeldLine]]:
        return self.store.held_now(keys)

    async def write(self, changes: Changes, outbox: list[dict]) -> None:
        self.written.append((changes, outbox))


class _OnHandSince(Mapping[tuple[PositionKey, datetime], int]):
    """Every position's on-hand-since, asked for as needed: a working set over the whole ledger cannot know
    beforehand which counts it will meet."""

    def __init__(self, movements: list[Movement]) -> None:
        self._movements = movements

    def __getitem__(self, probe: tuple[PositionKey, datetime]) -> int:
        return on_hand_since(self._movements, *probe)

    def __iter__(self) -> Iterator[tuple[PositionKey, datetime]]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _pick(rows: dict, keys: Iterable) -> dict:
    return {key: rows[key] for key in keys if key in rows}
