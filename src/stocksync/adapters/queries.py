"""The read side: committed state as HTTP shows it. Never locks, never writes.

Positions are read whole and their ``available`` computed by the one rule in the core (rule 1), so every read
path shows the same numbers for the same committed state.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from msgspec import Struct
from sqlalchemy import Row, any_, bindparam, literal, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util.concurrency import greenlet_spawn

from stocksync import metrics
from stocksync.adapters import tables as t
from stocksync.adapters.database import any_of, ids_param
from stocksync.adapters.ledger_store import recorded_of, reservation_of
from stocksync.aio import Gathering, settle
from stocksync.domain.errors import InvalidRequest, Unavailable, UnknownLocation
from stocksync.domain.model import (
    Location,
    Outcome,
    Position,
    PositionKey,
    Reservation,
    ReservationKey,
    ReservationLine,
)

_POSITION = [t.positions.c[name] for name in Position.__struct_fields__]
_LOCATIONS = select(*[t.locations.c[name] for name in Location.__struct_fields__])
# Built once: on the hottest reads, building the statement per request (and SQLAlchemy's cache key for fresh
# array bind parameters) took about a third of the call.
_SKUS, _LOCATION_IDS = ids_param("skus"), ids_param("location_ids")
_POSITIONS_OF_SKUS = (
    select(*_POSITION)
    .where(t.positions.c.sku == any_(_SKUS))
    .order_by(t.positions.c.location_id, t.positions.c.sku)
    .limit(bindparam("limit"))
)
# The hottest read (`GET /v1/availability`) goes to the driver: SQLAlchemy's execution and result machinery
# cost about a third of the API's CPU per request, more than the query itself.
_POSITIONS_AT = (  # the (location, sku) pairs of every read gathered into the statement (`GatheredReads`)
    f"SELECT {', '.join(Position.__struct_fields__)} FROM positions"
    " JOIN unnest($1::text[], $2::text[]) AS asked (location_id, sku) USING (location_id, sku)"
)
_PICKUP_STORES = _LOCATIONS.where(t.locations.c.pickup_enabled)
_PICKUP_POSITIONS = (
    select(*_POSITION).join(t.locations).where(t.locations.c.pickup_enabled, t.positions.c.sku == any_(_SKUS))
)


class MovementView(Struct, frozen=True, kw_only=True):
    """One movement as the audit trail shows it; ``id`` is the keyset cursor."""

    id: int
    event_id: str
    type: str
    location_id: str
    sku: str
    on_hand_delta: int
    reserved_delta: int
    damaged_delta: int
    reason: str | None
    superseded_by_count: bool
    reservation_id: str | None
    occurred_at: datetime
    recorded_at: datetime


MOVEMENT_CURSOR = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,19})?$")
_MOVEMENT = [t.movements.c[name] for name in MovementView.__struct_fields__]
# Every transaction below this id has finished (docs/design.md, "Paging the audit trail"), so no movement can
# commit later behind a page's cursor: the oldest transaction still running as the statement's snapshot
# saw it, leaving out those another database's backend is seen to run (they cannot write movements here).
_FINISHED_BEFORE = literal_column(
    """(SELECT least(pg_snapshot_xmax(pg_current_snapshot()),
        (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE NOT EXISTS (SELECT FROM pg_stat_activity a
                           WHERE a.backend_xid = xid(x) AND a.datname <> current_database()))))""",
    t.Xid8(),
)


class MovementCursor(Struct, frozen=True, kw_only=True):
    """A place in the audit trail: the writing transaction and the movement id, ``"<tx>.<id>"`` on the wire."""

    tx: int
    id: int

    def encode(self) -> str:
        return f"{self.tx}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> MovementCursor | int:
        """A cursor from ``next``, or a plain movement id (as the spec's ``id`` cursor)."""
        if not MOVEMENT_CURSOR.fullmatch(text):
            raise InvalidRequest("after is the `next` of a page or a movement id", field="after")
        tx, dot, movement_id = text.partition(".")
        if not dot:
            return _below(int(text), 2**63)
        return cls(tx=_below(int(tx), 2**64), id=_below(int(movement_id), 2**63))  # xid8, bigint


class GatheredReads:
    """Position reads that arrive while one is in the database gather and share the next statement and its
    pooled connection (as reservations share a group commit): under load a read costs a fraction of one of its
    own, so the API's CPU per request falls as the rate rises instead of the requests queueing; alone, a read
    goes at once. Reads never lock, and each still sees one committed state, its statement's."""

    def __init__(
        self,
        fetch: Callable[[list[PositionKey]], Awaitable[dict[PositionKey, Position]]],
        max_keys: int = 2_000,
    ) -> None:
        self._fetch = fetch
        self._gathering: Gathering[list[PositionKey], dict[PositionKey, Position]] = Gathering(
            self._read_group, len, max_keys
        )

    async def read(self, keys: list[PositionKey]) -> dict[PositionKey, Position]:
        """The positions found of ``keys`` (and maybe of other reads' keys)."""
        return await self._gathering(keys)

    async def _read_group(self, group: list[tuple[list[PositionKey], asyncio.Future]]) -> None:
        """One statement for the group's keys; an error is every read's (`Gathering`)."""
        found = await self._fetch(list(dict.fromkeys(key for keys, _ in group for key in keys)))
        metrics.POSITION_READ_GROUP.observe(len(group))
        for _, future in group:
            settle(future, found)


def _below(number: int, bound: int) -> int:
    if number >= bound:
        raise InvalidRequest("after is out of range", field="after")
    return number


class Queries:
    def __init__(self, engine: AsyncEngine) -> None:
        # Outside a transaction each read is one round trip: no BEGIN before it, no ROLLBACK when the
        # connection goes back to the pool. Reads of two statements may see two commits; none needs more.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._known_locations: set[str] = set()  # locations are never deleted: once known, known for good
        self._gathered = GatheredReads(self._positions_at)

    async def location(self, location_id: str) -> Location | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_LOCATIONS.where(t.locations.c.location_id == location_id))).first()
        return None if row is None else Location(**row._asdict())

    async def positions(
        self, skus: Sequence[str], location_ids: Sequence[str] = (), *, limit: int | None = None
    ) -> list[Position]:
        """Every (location, sku) asked for, a never-seen one as zeros; without locations, those that exist
        (the first ``limit`` of them by location and sku)."""
        if not location_ids:
            async with self.engine.connect() as conn:
                rows = await conn.execute(_POSITIONS_OF_SKUS, {"skus": list(skus), "limit": limit})
                return [Position(**row._asdict()) for row in rows]
        await self._require_locations(location_ids)
        keys = [
            (location_id, sku) for location_id in dict.fromkeys(location_ids) for sku in dict.fromkeys(skus)
        ]
        found = await self._gathered.read(keys)
        return [found.get(key) or Position(location_id=key[0], sku=key[1]) for key in keys]

    async def _positions_at(self, keys: list[PositionKey]) -> dict[PositionKey, Position]:
        async with self._driver() as driver:
            rows = await driver.fetch(_POSITIONS_AT, [k[0] for k in keys], [k[1] for k in keys])
        return {(row[0], row[1]): Position(**dict(row.items())) for row in rows}

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's asyncpg connection for one statement outside a transaction, checked out
        without SQLAlchemy's `Connection` around it (whose checkout, isolation level and return cost about as
        much CPU as the availability query itself). One that died under the read leaves the pool, and the
        read is Unavailable, as SQLAlchemy would have judged it."""
        pooled = await self.engine.raw_connection()
        try:
            yield pooled.driver_connection
        except Exception as error:
            if pooled.driver_connection.is_closed():
                await greenlet_spawn(pooled.invalidate)
                raise Unavailable("the database connection was lost; retry later") from error
            raise
        finally:
            await greenlet_spawn(pooled.close)

    async def _require_locations(self, location_ids: Sequence[str]) -> None:
        """Reads are the hot path: ask the database only about locations not seen before."""
        if self._known_locations.issuperset(location_ids):
            return
        column = t.locations.c.location_id
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(column).where(column == any_of(location_ids)))).scalars()
            self._known_locations.update(found)
        if missing := [
            location_id for location_id in location_ids if location_id not in self._known_locations
        ]:
            raise UnknownLocation(f"location {missing[0]!r} is not known", location_id=missing[0])

    async def position(self, location_id: str, sku: str) -> Position:
        (position,) = await self.positions([sku], [location_id])
        return position

    async def pickup_stock(self, skus: Sequence[str]) -> tuple[list[Location], dict[PositionKey, Position]]:
        """Pickup-enabled locations and their positions of ``skus``."""
        async with self.engine.connect() as conn:
            stores = await conn.execute(_PICKUP_STORES)
            rows = await conn.execute(_PICKUP_POSITIONS, {"skus": list(skus)})
        positions = {(row.location_id, row.sku): Position(**row._asdict()) for row in rows}
        return [Location(**row._asdict()) for row in stores], positions

    async def reservations_named(
        self, reservation_id: str, location_id: str | None = None, *, limit: int = 2
    ) -> list[Reservation]:
        """The reservations of this id: at ``location_id``, or at up to ``limit`` locations (a reservation is
        its location and id together, as an event is)."""
        r = t.reservations.c
        query = select(t.reservations).where(r.reservation_id == reservation_id).order_by(r.location_id)
        if location_id is not None:
            query = query.where(r.location_id == location_id)
        async with self.engine.connect() as conn:
            return await _with_lines(conn, (await conn.execute(query.limit(limit))).all())

    async def reservations(
        self, location_ids: Sequence[str] | None, status: str | None, limit: int
    ) -> list[Reservation]:
        """Oldest first; ``location_ids`` None means every location."""
        r = t.reservations.c
        query = select(t.reservations).order_by(r.created_at, r.reservation_id).limit(limit)
        if location_ids is not None:
            query = query.where(r.location_id == any_of(location_ids))
        if status is not None:
            query = query.where(r.status == status)
        async with self.engine.connect() as conn:
            return await _with_lines(conn, (await conn.execute(query)).all())

    async def outcomes(
        self, event_id: str, location_id: str | None = None, *, limit: int = 2
    ) -> list[Outcome]:
        """The recorded outcomes of ``event_id``: at ``location_id``, or at up to ``limit`` locations (rule 10)."""
        e = t.processed_events.c
        query = select(t.processed_events).where(e.event_id == event_id).order_by(e.location_id).limit(limit)
        if location_id is not None:
            query = query.where(e.location_id == location_id)
        async with self.engine.connect() as conn:
            return [recorded_of(row).outcome for row in await conn.execute(query)]

    async def movements(
        self, *, location_id: str | None, sku: str | None, after: MovementCursor | int, limit: int
    ) -> tuple[list[MovementView], MovementCursor | None]:
        """One page oldest first after the cursor ``after``, and the next cursor (None when no more).

        ``after`` is a cursor from ``next`` or a movement id (its own position: the cursor of that row).
        """
        m = t.movements.c
        query = select(*_MOVEMENT, m.tx).where(m.tx < _FINISHED_BEFORE).order_by(m.tx, m.id).limit(limit + 1)
        if location_id is not None:
            query = query.where(m.location_id == location_id)
        if sku is not None:
            query = query.where(m.sku == sku)
        async with self.engine.connect() as conn:
            if isinstance(after, int):
                after = await _cursor_of(conn, after)
            if after is not None:
                query = query.where(tuple_(m.tx, m.id) > tuple_(literal(after.tx, t.Xid8), after.id))
            rows = (await conn.execute(query)).all()
        items = [MovementView(**dict(zip(MovementView.__struct_fields__, row))) for row in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return items, None if last is None else MovementCursor(tx=last.tx, id=last.id)


async def _cursor_of(conn: AsyncConnection, movement_id: int) -> MovementCursor | None:
    """The cursor a page ending at this movement would have given; before every movement for 0."""
    if movement_id == 0:
        return None
    m = t.movements.c
    tx = (await conn.execute(select(m.tx).where(m.id == movement_id))).scalar()
    if tx is None:
        raise InvalidRequest(
            f"after={movement_id} is no movement id; use the `next` of a page", field="after"
        )
    return MovementCursor(tx=tx, id=movement_id)


async def _with_lines(conn: AsyncConnection, rows: Sequence[Row]) -> list[Reservation]:
    line = t.reservation_lines.c
    keys = [(row.location_id, row.reservation_id) for row in rows]
    lines: dict[ReservationKey, list[ReservationLine]] = {key: [] for key in keys}
    if lines:
        found = await conn.execute(
            select(line.reservation_id, line.location_id, line.sku, line.qty)
            .where(line.reservation_id == any_of(list({rid for _, rid in lines})))
            .order_by(line.reservation_id, line.location_id, line.line_no)
        )
        for row in found:
            if (key := (row.location_id, row.reservation_id)) in lines:
                lines[key].append(ReservationLine(sku=row.sku, qty=row.qty))
    return [reservation_of(row, lines[key]) for row, key in zip(rows, keys, strict=True)]
