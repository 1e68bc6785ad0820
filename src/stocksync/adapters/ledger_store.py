"""The ledger's tables for one batch in one transaction: what it loads and locks, and its one write.

Locks are taken in one global order, reservations by (reservation_id, location_id), then positions by
(location_id, sku), so
concurrent batches wait for each other but never deadlock.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import msgspec
from msgspec import structs
from sqlalchemy import Table, Text, any_, func, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from stocksync.adapters import tables as t
from stocksync.adapters.database import answers, ids_param
from stocksync.adapters.outbox import OUTBOX_CHANNEL, packed
from stocksync.domain.events import INBOUND_TYPES, Command
from stocksync.domain.ledger import (
    Changes,
    HeldLine,
    Loaded,
    count_probes,
    position_keys,
    reservation_keys,
    returned_orders,
)
from stocksync.domain.model import (
    EventKey,
    Location,
    OrderReturns,
    Outcome,
    Position,
    PositionKey,
    RecordedEvent,
    Reservation,
    ReservationKey,
    ReservationLine,
    Shortage,
)

_DIALECT = postgresql.dialect()


class ConcurrentWrite(Exception):
    """Another transaction created a row this one meant to create: the batch is retried on fresh reads."""


# A column of identifiers (ids, skus, types, statuses: text, never NULL) travels as one text parameter, split
# on the server: asyncpg encodes an array parameter element by element, about 0.56 µs a text on the worker's
# core, where one joined string costs it once (benchmarks/profiling.md). No identifier holds a control
# character (the contract's patterns refuse them), so the unit separator splits them back.
SEPARATOR = "\x1f"


def _texts(name: str) -> str:
    """SQL for the ``text[]`` that `joined` sent as parameter ``name``."""
    return f"string_to_array(CAST(:{name} AS text), E'\\x1f')"


def joined(values: Sequence[str]) -> str:
    """``values`` as one parameter for `_texts`. A value that would not come back as itself (one holding the
    separator, or a lone empty string) is refused: its batch fails, as any event the ledger cannot store."""
    text = SEPARATOR.join(values)
    if text.count(SEPARATOR) != max(len(values) - 1, 0) or (len(values) == 1 and not text):
        raise ValueError("an identifier holds a control character or is empty")
    return text


_POSITION_COLUMNS = "location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at"
_RECORD_COLUMNS = "event_id, body_hash, type, outcome, error, detail, reservation_id, shortages, recorded_at"
# The positions locked, and the recorded events of the batch's event ids, in one round trip: rows of the
# second part have an event_id, rows of the first none.
_LOCK_POSITIONS = text(
    f"""
    WITH locked AS (
        SELECT p.location_id, p.sku, p.on_hand, p.reserved, p.damaged, p.safety_stock, p.version,
               p.last_count_at
        FROM positions p
        JOIN unnest({_texts("locations")}, {_texts("skus")}) AS k(location_id, sku)
          ON p.location_id = k.location_id AND p.sku = k.sku
        ORDER BY p.location_id, p.sku
        FOR UPDATE OF p
    )
    SELECT {_POSITION_COLUMNS}, NULL AS event_id, NULL::bytea AS body_hash, NULL AS type, NULL AS outcome,
           NULL AS error, NULL AS detail, NULL AS reservation_id, NULL::jsonb AS shortages,
           NULL::timestamptz AS recorded_at
    FROM locked
    UNION ALL
    SELECT location_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, {_RECORD_COLUMNS}
    FROM processed_events WHERE event_id = ANY({_texts("ids")})
    """
).columns(shortages=JSONB)

# Parts of the one write statement (see `Changes`); ``{p}`` prefixes the part's parameters.
_UPDATE_POSITIONS = f"""
    UPDATE positions p
    SET on_hand = v.on_hand, reserved = v.reserved, damaged = v.damaged, safety_stock = v.safety_stock,
        version = v.version, last_count_at = v.last_count_at, updated_at = :{{p}}now
    FROM unnest({_texts("{p}locations")}, {_texts("{p}skus")},
                CAST(:{{p}}on_hand AS bigint[]), CAST(:{{p}}reserved AS bigint[]),
                CAST(:{{p}}damaged AS bigint[]), CAST(:{{p}}safety_stock AS bigint[]),
                CAST(:{{p}}version AS bigint[]), CAST(:{{p}}last_count_at AS timestamptz[]))
         AS v(location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at)
    WHERE p.location_id = v.location_id AND p.sku = v.sku
    RETURNING 1
"""
_SETTLE_RESERVATIONS = f"""
    UPDATE reservations r SET status = v.status, updated_at = :{{p}}now
    FROM unnest({_texts("{p}ids")}, {_texts("{p}locations")}, {_texts("{p}statuses")})
         AS v(reservation_id, location_id, status)
    WHERE r.reservation_id = v.reservation_id AND r.location_id = v.location_id
    RETURNING 1
"""

_ON_HAND_AFTER = text(
    """
    SELECT k.i, COALESCE(sum(m.on_hand_delta), 0)
    FROM unnest(CAST(:locations AS text[]), CAST(:skus AS text[]), CAST(:whens AS timestamptz[]))
         WITH ORDINALITY AS k(location_id, sku, after, i)
    LEFT JOIN movements m ON m.location_id = k.location_id AND m.sku = k.sku AND m.occurred_at >= k.after
    GROUP BY k.i
    """
)


def _columns(rows: Sequence[Position]) -> dict[str, list]:
    return {
        "locations": joined([p.location_id for p in rows]),
        "skus": joined([p.sku for p in rows]),
        "on_hand": [p.on_hand for p in rows],
        "reserved": [p.reserved for p in rows],
        "damaged": [p.damaged for p in rows],
        "safety_stock": [p.safety_stock for p in rows],
        "version": [p.version for p in rows],
        "last_count_at": [p.last_count_at for p in rows],
    }


# The batch's reads, built once: per batch, building them (and SQLAlchemy's cache keys for fresh array
# parameters) cost about as much as running them.
_IDS = ids_param("ids")
_LOAD_LOCATIONS = select(*[t.locations.c[name] for name in Location.__struct_fields__]).where(
    t.locations.c.location_id == any_(_IDS)
)
# A reservation with its lines, locked, in one read (the lines as arrays in line order). A reservation is its
# location and id together: the same id at another location is another reservation, neither read nor locked.
_LOCK_RESERVATIONS = text(
    f"""
    SELECT r.reservation_id, r.location_id, r.channel, r.status, r.reference, r.event_id, r.created_at,
           r.expires_at,
           ARRAY(SELECT l.sku FROM reservation_lines l
                 WHERE l.reservation_id = r.reservation_id AND l.location_id = r.location_id
                 ORDER BY l.line_no) AS skus,
           ARRAY(SELECT l.qty FROM reservation_lines l
                 WHERE l.reservation_id = r.reservation_id AND l.location_id = r.location_id
                 ORDER BY l.line_no) AS qtys
    FROM reservations r
    JOIN unnest({_texts("ids")}, {_texts("locations")}) AS k(reservation_id, location_id)
      ON r.reservation_id = k.reservation_id AND r.location_id = k.location_id
    ORDER BY r.reservation_id, r.location_id
    FOR UPDATE OF r
    """
)


async def load_locations(conn: AsyncConnection, location_ids: Iterable[str]) -> dict[str, Location]:
    rows = await conn.execute(_LOAD_LOCATIONS, {"ids": list(location_ids)})
    return {row.location_id: Location(**row._asdict()) for row in rows}


_READ_RESERVATIONS = text(_LOCK_RESERVATIONS.text.replace("FOR UPDATE OF r", ""))


async def lock_reservations(
    conn: AsyncConnection, keys: Iterable[ReservationKey]
) -> dict[ReservationKey, Reservation]:
    """The reservations of these (location_id, reservation_id) keys with their lines, locked."""
    return await _reservations(conn, keys, _LOCK_RESERVATIONS)


async def read_reservations(
    conn: AsyncConnection, keys: Iterable[ReservationKey]
) -> dict[ReservationKey, Reservation]:
    """The same, not locked (a read)."""
    return await _reservations(conn, keys, _READ_RESERVATIONS)


async def _reservations(
    conn: AsyncConnection, keys: Iterable[ReservationKey], query: TextClause
) -> dict[ReservationKey, Reservation]:
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    rows = await conn.execute(
        query, {"locations": joined([k[0] for k in ordered]), "ids": joined([k[1] for k in ordered])}
    )
    return {
        (row.location_id, row.reservation_id): reservation_of(
            row, (ReservationLine(sku=sku, qty=qty) for sku, qty in zip(row.skus, row.qtys, strict=True))
        )
        for row in rows
    }


def reservation_of(row, lines: Iterable[ReservationLine]) -> Reservation:
    return Reservation(
        reservation_id=row.reservation_id,
        location_id=row.location_id,
        channel=row.channel,
        status=row.status,
        lines=tuple(lines),
        created_at=row.created_at,
        expires_at=row.expires_at,
        event_id=row.event_id,
        reference=row.reference,
    )


async def lock_positions(conn: AsyncConnection, keys: Iterable[PositionKey]) -> dict[PositionKey, Position]:
    return (await lock_positions_and_read_recorded(conn, keys, ()))[0]


async def lock_positions_and_read_recorded(
    conn: AsyncConnection, keys: Iterable[PositionKey], events: Iterable[EventKey]
) -> tuple[dict[PositionKey, Position], dict[EventKey, RecordedEvent]]:
    """The positions of these keys, locked, and the recorded events of these (location_id, event_id) keys
    (rule 10), in one statement.

    The statement's snapshot is taken before its locks are granted, so it may miss the record of a batch
    with the same event that committed meanwhile: this batch then applies that event again, and its write,
    whose record of it conflicts, raises `ConcurrentWrite`: the batch is retried on fresh reads."""
    ordered, wanted = sorted(set(keys)), set(events)
    if not ordered and not wanted:
        return {}, {}
    rows = await conn.execute(
        _LOCK_POSITIONS,
        {
            "locations": joined([k[0] for k in ordered]),
            "skus": joined([k[1] for k in ordered]),
            "ids": joined(list({event_id for _, event_id in wanted})),
        },
    )
    positions, recorded = {}, {}
    for row in rows:
        if row.event_id is None:
            positions[(row[0], row[1])] = _position(*row[:8])
        elif (key := (row.location_id, row.event_id)) in wanted:
            recorded[key] = recorded_of(row)
    return positions, recorded


def _position(location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at) -> Position:
    """From a row of `_LOCK_POSITIONS` by position, not by ``Row._asdict()`` (7% of the worker's CPU)."""
    return Position(
        location_id=location_id,
        sku=sku,
        on_hand=on_hand,
        reserved=reserved,
        damaged=damaged,
        safety_stock=safety_stock,
        version=version,
        last_count_at=last_count_at,
    )


def recorded_of(row) -> RecordedEvent:
    shortages = tuple(msgspec.convert(row.shortages or [], list[Shortage]))
    outcome = Outcome(
        event_id=row.event_id,
        type=row.type,
        location_id=row.location_id,
        outcome=row.outcome,
        recorded_at=row.recorded_at,
        error=row.error,
        detail=row.detail,
        reservation_id=row.reservation_id,
        shortages=shortages,
    )
    return RecordedEvent(body_hash=row.body_hash, outcome=outcome)


async def on_hand_after(
    conn: AsyncConnection, probes: Sequence[tuple[PositionKey, datetime]]
) -> dict[tuple[PositionKey, datetime], int]:
    """Sum of stored on_hand deltas per position from each instant on (for counts, rule 9)."""
    if not probes:
        return {}
    rows = await conn.execute(
        _ON_HAND_AFTER,
        {
            "locations": [key[0] for key, _ in probes],
            "skus": [key[1] for key, _ in probes],
            "whens": [when for _, when in probes],
        },
    )
    sums = {i: total for i, total in rows.all()}
    return {probe: int(sums[i]) for i, probe in enumerate(probes, start=1)}


async def held_lines(conn: AsyncConnection, keys: Iterable[PositionKey]) -> dict[PositionKey, list[HeldLine]]:
    """The held reservation lines of these positions, as stored (the core puts them in rule 4's order)."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    r, line = t.reservations.c, t.reservation_lines.c
    rows = await conn.execute(
        select(r.location_id, line.sku, r.reservation_id, line.qty, r.created_at)
        .join_from(t.reservations, t.reservation_lines)
        .where(r.status == "held", func.row(r.location_id, line.sku).in_([func.row(*k) for k in keys]))
    )
    held: dict[PositionKey, list[HeldLine]] = {}
    for row in rows:
        held.setdefault((row.location_id, row.sku), []).append(
            HeldLine(reservation_id=row.reservation_id, qty=row.qty, created_at=row.created_at)
        )
    return held


# The orders a batch's returns name: locked first, then read in a statement of its own, so that under READ
# COMMITTED the read sees a concurrent return to the same order that committed while this one waited.
_LOCK_ORDERS = text(
    "SELECT order_id FROM orders WHERE order_id = ANY(CAST(:ids AS text[])) ORDER BY order_id FOR UPDATE"
)
_READ_ORDERS = text(
    "SELECT order_id, status, lines, returned FROM orders WHERE order_id = ANY(CAST(:ids AS text[]))"
)
_RETURNED = """
    UPDATE orders o SET returned = CAST(v.returned AS jsonb), updated_at = :{p}now
    FROM unnest(CAST(:{p}ids AS text[]), CAST(:{p}returned AS text[])) AS v(order_id, returned)
    WHERE o.order_id = v.order_id
    RETURNING 1
"""


async def lock_returned_orders(conn: AsyncConnection, ids: set[str]) -> dict[str, OrderReturns]:
    if not ids:
        return {}
    await conn.execute(_LOCK_ORDERS, {"ids": sorted(ids)})
    rows = await conn.execute(_READ_ORDERS, {"ids": sorted(ids)})
    return {
        row.order_id: OrderReturns(
            order_id=row.order_id,
            status=row.status,
            shipped={line["sku"]: line["qty"] for line in row.lines},
            returned=dict(row.returned),
        )
        for row in rows
    }


async def load(
    conn: AsyncConnection, events: Sequence[Command], now: datetime, locations: dict[str, Location]
) -> Loaded:
    """Lock and read what the batch may change, in the global lock order: reservations, then positions with
    the recorded events; the sums for counts after the locks, so they include what a batch that held them
    committed."""
    reservations = await lock_reservations(conn, reservation_keys(events))
    positions, recorded = await lock_positions_and_read_recorded(
        conn,
        position_keys(events, reservations),
        [(e.location_id, e.event_id) for e in events if e.type in INBOUND_TYPES],
    )
    return Loaded(
        now=now,
        locations=locations,
        positions=positions,
        reservations=reservations,
        recorded=recorded,
        on_hand_since=await on_hand_after(conn, count_probes(events)),
        orders=await lock_returned_orders(conn, returned_orders(events)),
    )


async def write(conn: AsyncConnection, changes: Changes, outbox: list[dict]) -> None:
    """Everything the batch changed and the messages it publishes, in one statement."""
    await _statement_of(changes, outbox).write(conn)


def _statement_of(changes: Changes, outbox: list[dict]) -> _Writes:
    now, batch = changes.now, _Writes()
    created = [p for p in changes.positions if p.key in changes.new_positions]
    existing = [p for p in changes.positions if p.key not in changes.new_positions]
    batch.create(t.positions, [_position_row(p, now) for p in created])
    if existing:
        batch.add(_UPDATE_POSITIONS, {**_columns(existing), "now": now})
    batch.insert(t.movements, [{**structs.asdict(m), "recorded_at": now} for m in changes.movements])
    batch.create(t.reservations, [_reservation_row(r, now) for r in changes.new_reservations])
    batch.create(
        t.reservation_lines,
        [
            {
                "reservation_id": r.reservation_id,
                "location_id": r.location_id,
                "sku": line.sku,
                "line_no": n,
                "qty": line.qty,
            }
            for r in changes.new_reservations
            for n, line in enumerate(r.lines)
        ],
    )
    if settled := changes.settled_reservations:
        batch.add(
            _SETTLE_RESERVATIONS,
            {
                "ids": joined([r.reservation_id for r in settled]),
                "locations": joined([r.location_id for r in settled]),
                "statuses": joined([r.status for r in settled]),
                "now": now,
            },
        )
    if changes.returned_orders:
        batch.add(
            _RETURNED,
            {
                "ids": [o.order_id for o in changes.returned_orders],
                "returned": [msgspec.json.encode(o.returned).decode() for o in changes.returned_orders],
                "now": now,
            },
        )
    batch.create(t.processed_events, [_record_row(r) for r in changes.records])
    batch.outbox(outbox)
    return batch


class PostgresLedgerStore:
    """The ledger's tables, a batch at a time: `transaction` opens one, whose `load` locks and reads what the
    batch may change, `held` reads the holds the core asks for, and `write` writes the batch's record.

    Locations are never deleted, so once read one is known for good: a batch reads only those it has not
    seen (usually none)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._locations: dict[str, Location] = {}

    async def answers(self) -> bool:
        return await answers(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresBatch]:
        async with self.engine.begin() as conn:
            yield PostgresBatch(conn, self._locations)


class PostgresBatch:
    def __init__(self, conn: AsyncConnection, locations: dict[str, Location]) -> None:
        self.conn = conn
        self._locations = locations

    async def load(self, events: Sequence[Command], now: datetime) -> Loaded:
        wanted = {e.location_id for e in events}
        if unseen := wanted - self._locations.keys():
            self._locations.update(await load_locations(self.conn, unseen))
        known = {lid: self._locations[lid] for lid in wanted if lid in self._locations}
        return await load(self.conn, events, now, known)

    async def held(self, keys: set[PositionKey]) -> dict[PositionKey, list[HeldLine]]:
        return await held_lines(self.conn, keys)

    async def write(self, changes: Changes, outbox: list[dict]) -> None:
        await write(self.conn, changes, outbox)

    async def write_outbox(self, outbox: list[dict]) -> None:
        """Messages of a change that moved no stock (an order refused whole), with their NOTIFY."""
        batch = _Writes()
        batch.outbox(outbox)
        await batch.write(self.conn)


class _Writes:
    """A batch's writes as one statement of data-modifying CTEs: one round trip for every table it touches
    (positions, movements, reservations and their lines, processed events, outbox), where one statement per
    table took seven. The statement text depends only on which parts and columns are there, so it is built
    once per shape. A part must not touch a row another part touches (one statement sees one snapshot)."""

    def __init__(self) -> None:
        self._parts: list[str] = []  # the SQL of each part, which is also the statement's shape
        self._params: dict[str, object] = {}
        self._must_insert: dict[int, int] = {}  # part -> rows that must all be new
        self._notify = False

    def add(self, sql: str, params: dict[str, object]) -> None:
        """A part: ``sql`` (``{p}`` before each parameter name; ``RETURNING 1``) and its parameters."""
        self._params.update({f"p{len(self._parts)}_{name}": value for name, value in params.items()})
        self._parts.append(sql)

    def insert(self, table: Table, rows: list[dict], *, on_conflict: str = "") -> None:
        if rows:
            columns = tuple(rows[0])
            sql, identifiers = _unnest_insert(table.name, columns, on_conflict)
            columns_of = {c: [row[c] for row in rows] for c in columns}
            self.add(sql, {c: joined(v) if c in identifiers else v for c, v in columns_of.items()})

    def create(self, table: Table, rows: list[dict]) -> None:
        """Rows that must not exist yet, inserted in primary-key order (the global lock order). A row another
        transaction created first is skipped, and `write` raises ConcurrentWrite: the batch is retried."""
        if rows:
            key = [column.name for column in table.primary_key.columns]
            self._must_insert[len(self._parts)] = len(rows)
            rows = sorted(rows, key=lambda row: [row[name] for name in key])
            self.insert(table, rows, on_conflict=" ON CONFLICT DO NOTHING")

    def outbox(self, rows: list[dict]) -> None:
        """The messages to publish (in one row: `packed`), and a NOTIFY (delivered at commit) that wakes the
        relay."""
        if rows:
            self.insert(t.outbox, packed(rows))
            self._notify = True

    async def write(self, conn: AsyncConnection) -> None:
        if not self._parts:
            return
        counts = (await conn.execute(_statement(tuple(self._parts), self._notify), self._params)).one()
        for part, expected in self._must_insert.items():
            if counts[part] != expected:
                raise ConcurrentWrite(f"{expected - counts[part]} row(s) were created concurrently")


@functools.lru_cache(maxsize=512)
def _statement(shape: tuple[str, ...], notify: bool) -> TextClause:
    parts = [sql.format(p=f"p{i}_").strip() for i, sql in enumerate(shape)]
    ctes = ",\n".join(f"w{i} AS ({part})" for i, part in enumerate(parts))
    counts = [f"(SELECT count(*) FROM w{i})" for i in range(len(parts))]
    if notify:
        counts.append(f"pg_notify('{OUTBOX_CHANNEL}', '') IS NULL")
    # The foreign-key checks it fires (after the statement, one per inserted row) use cached plans again: a
    # plan per row, as the connection's custom plans would make them (`database.create_engine`), costs more
    # than the checks. ``true``: for this transaction only.
    generic = "(SELECT set_config('plan_cache_mode', 'auto', true)) AS generic_plans"
    return text(f"WITH {ctes}\nSELECT {', '.join(counts)}\nFROM {generic}")


@functools.cache
def _unnest_insert(
    table_name: str, columns: tuple[str, ...], on_conflict: str = ""
) -> tuple[str, frozenset[str]]:
    """``INSERT ... SELECT FROM unnest(arrays)``: one statement and a bind parameter per column however many
    rows, where executemany pays per row; and the columns sent `joined` (the identifiers: text, never
    NULL)."""
    table = t.metadata.tables[table_name]
    arrays, values, identifiers = [], [], set()
    for name in columns:
        column = table.c[name]
        column_type = column.type
        if isinstance(column_type, Text) and not column.nullable:
            arrays.append(_texts(f"{{p}}{name}"))
            values.append(name)
            identifiers.add(name)
        elif isinstance(column_type, JSONB):  # asyncpg sends JSON as text; cast each element back
            arrays.append(f"CAST(:{{p}}{name} AS text[])")
            values.append(f"CAST({name} AS jsonb)")
        else:
            arrays.append(f"CAST(:{{p}}{name} AS {column_type.compile(dialect=_DIALECT)}[])")
            values.append(name)
    listed = ", ".join(columns)
    sql = (
        f"INSERT INTO {table_name} ({listed}) SELECT {', '.join(values)} "
        f"FROM unnest({', '.join(arrays)}) AS v({listed}){on_conflict} RETURNING 1"
    )
    return sql, frozenset(identifiers)


def _position_row(position: Position, now: datetime) -> dict:
    return {**structs.asdict(position), "updated_at": now}


def _reservation_row(r: Reservation, now: datetime) -> dict:
    return {
        "reservation_id": r.reservation_id,
        "location_id": r.location_id,
        "channel": r.channel,
        "status": r.status,
        "reference": r.reference,
        "event_id": r.event_id,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "updated_at": now,
    }


def _record_row(record: RecordedEvent) -> dict:
    o = record.outcome
    return {
        "event_id": o.event_id,
        "body_hash": record.body_hash,
        "type": o.type,
        "location_id": o.location_id,
        "outcome": o.outcome,
        "error": o.error,
        "detail": o.detail,
        "reservation_id": o.reservation_id,
        "shortages": msgspec.json.encode(o.shortages).decode() if o.shortages else None,
        "recorded_at": o.recorded_at,
    }
