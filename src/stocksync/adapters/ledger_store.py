"""Loads and writes the ledger's working set inside one transaction (the unit of work's SQL).

Locks are taken in one global order, reservations by id, then positions by (location_id, sku), so
concurrent batches wait for each other but never deadlock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec
from msgspec import structs
from sqlalchemy import Table, any_, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from stocksync.adapters import tables as t
from stocksync.adapters.database import ids_param
from stocksync.domain.ledger import Ledger
from stocksync.domain.model import (
    Location,
    Outcome,
    Position,
    PositionKey,
    RecordedEvent,
    Reservation,
    ReservationLine,
    Shortage,
)

_DIALECT = postgresql.dialect()


class ConcurrentWrite(Exception):
    """Another transaction created a row this one meant to create: the batch is retried on fresh reads."""


_LOCK_POSITIONS = text(
    """
    SELECT p.location_id, p.sku, p.on_hand, p.reserved, p.damaged, p.safety_stock, p.version, p.last_count_at
    FROM positions p
    JOIN unnest(CAST(:locations AS text[]), CAST(:skus AS text[])) AS k(location_id, sku)
      ON p.location_id = k.location_id AND p.sku = k.sku
    ORDER BY p.location_id, p.sku
    FOR UPDATE OF p
    """
)

_UPDATE_POSITIONS = text(
    """
    UPDATE positions p
    SET on_hand = v.on_hand, reserved = v.reserved, damaged = v.damaged, safety_stock = v.safety_stock,
        version = v.version, last_count_at = v.last_count_at, updated_at = :now
    FROM unnest(CAST(:locations AS text[]), CAST(:skus AS text[]), CAST(:on_hand AS bigint[]),
                CAST(:reserved AS bigint[]), CAST(:damaged AS bigint[]), CAST(:safety_stock AS bigint[]),
                CAST(:version AS bigint[]), CAST(:last_count_at AS timestamptz[]))
         AS v(location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at)
    WHERE p.location_id = v.location_id AND p.sku = v.sku
    """
)

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
        "locations": [p.location_id for p in rows],
        "skus": [p.sku for p in rows],
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
_LOCK_RESERVATIONS = (
    select(t.reservations)
    .where(t.reservations.c.reservation_id == any_(_IDS))
    .order_by(t.reservations.c.reservation_id)
    .with_for_update()
)
_RESERVATION_LINES = (
    select(t.reservation_lines.c.reservation_id, t.reservation_lines.c.sku, t.reservation_lines.c.qty)
    .where(t.reservation_lines.c.reservation_id == any_(_IDS))
    .order_by(t.reservation_lines.c.reservation_id, t.reservation_lines.c.line_no)
)
_LOAD_RECORDED = select(t.processed_events).where(t.processed_events.c.event_id == any_(_IDS))


async def load_locations(conn: AsyncConnection, location_ids: Iterable[str]) -> dict[str, Location]:
    rows = await conn.execute(_LOAD_LOCATIONS, {"ids": list(location_ids)})
    return {row.location_id: Location(**row._asdict()) for row in rows}


async def lock_reservations(conn: AsyncConnection, reservation_ids: Iterable[str]) -> dict[str, Reservation]:
    ids = sorted(set(reservation_ids))
    if not ids:
        return {}
    rows = (await conn.execute(_LOCK_RESERVATIONS, {"ids": ids})).all()
    lines: dict[str, list[ReservationLine]] = {}
    line_rows = await conn.execute(_RESERVATION_LINES, {"ids": [row.reservation_id for row in rows]})
    for line in line_rows:
        lines.setdefault(line.reservation_id, []).append(ReservationLine(sku=line.sku, qty=line.qty))
    return {row.reservation_id: reservation_of(row, lines.get(row.reservation_id, ())) for row in rows}


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
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    rows = await conn.execute(
        _LOCK_POSITIONS, {"locations": [k[0] for k in ordered], "skus": [k[1] for k in ordered]}
    )
    return {(row.location_id, row.sku): Position(**row._asdict()) for row in rows}


async def load_recorded(conn: AsyncConnection, event_ids: Iterable[str]) -> dict[str, RecordedEvent]:
    rows = await conn.execute(_LOAD_RECORDED, {"ids": list(set(event_ids))})
    return {row.event_id: recorded_of(row) for row in rows}


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


async def held_by_position(
    conn: AsyncConnection, keys: Iterable[PositionKey]
) -> dict[PositionKey, list[tuple[str, int]]]:
    """Held reservation lines per position, oldest reservation first."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    r, line = t.reservations.c, t.reservation_lines.c
    rows = await conn.execute(
        select(r.location_id, line.sku, r.reservation_id, line.qty)
        .join_from(t.reservations, t.reservation_lines)
        .where(r.status == "held", func.row(r.location_id, line.sku).in_([func.row(*k) for k in keys]))
        .order_by(r.created_at, r.reservation_id)
    )
    held: dict[PositionKey, list[tuple[str, int]]] = {}
    for row in rows:
        held.setdefault((row.location_id, row.sku), []).append((row.reservation_id, row.qty))
    return held


async def write(conn: AsyncConnection, ledger: Ledger, stored: Iterable[PositionKey], now: datetime) -> None:
    """Everything the batch changed, in one transaction; raises ConcurrentWrite when a create raced."""
    stored = set(stored)
    changed = [ledger.positions[key] for key in ledger.changed_positions]
    existing = [p for p in changed if p.key in stored]
    created = [p for p in changed if p.key not in stored]
    if created:
        await _create(conn, t.positions, [_position_row(p, now) for p in created])
    if existing:
        await conn.execute(_UPDATE_POSITIONS, {**_columns(existing), "now": now})
    if ledger.movements:
        await bulk_insert(
            conn, t.movements, [{**structs.asdict(m), "recorded_at": now} for m in ledger.movements]
        )
    await _write_reservations(conn, ledger, now)
    if ledger.new_records:
        await _create(conn, t.processed_events, [_record_row(r) for r in ledger.new_records.values()])


async def write_outbox(conn: AsyncConnection, rows: list[dict]) -> None:
    """The messages to publish, and a NOTIFY (delivered at commit) that wakes the relay."""
    if rows:
        await bulk_insert(conn, t.outbox, rows)
        await conn.execute(text("SELECT pg_notify('stocksync_outbox', '')"))


async def _write_reservations(conn: AsyncConnection, ledger: Ledger, now: datetime) -> None:
    changed = [ledger.reservations[rid] for rid in ledger.changed_reservations]
    # New when the reserve that made it was first applied in this batch, even if the batch already settled it.
    created = [r for r in changed if r.event_id in ledger.new_records]
    settled = [r for r in changed if r.event_id not in ledger.new_records]
    if created:
        await _create(conn, t.reservations, [_reservation_row(r, now) for r in created])
        await bulk_insert(
            conn,
            t.reservation_lines,
            [
                {"reservation_id": r.reservation_id, "sku": line.sku, "line_no": n, "qty": line.qty}
                for r in created
                for n, line in enumerate(r.lines)
            ],
        )
    if settled:
        await conn.execute(
            update(t.reservations)
            .where(t.reservations.c.reservation_id == bindparam("rid"))
            .values(status=bindparam("new_status"), updated_at=now),
            [{"rid": r.reservation_id, "new_status": r.status} for r in settled],
        )


async def _create(conn: AsyncConnection, table: Table, rows: list[dict]) -> None:
    """Rows that must not exist yet, inserted in primary-key order (the global lock order); a row another
    transaction created first means the batch is retried."""
    primary_key = [column.name for column in table.primary_key.columns]
    rows = sorted(rows, key=lambda row: [row[name] for name in primary_key])
    inserted = await bulk_insert(conn, table, rows, skip_conflicts=True)
    if inserted != len(rows):
        raise ConcurrentWrite(f"{len(rows) - inserted} {table.name} row(s) were created concurrently")


async def bulk_insert(
    conn: AsyncConnection, table: Table, rows: list[dict], *, skip_conflicts: bool = False
) -> int:
    """One ``INSERT ... SELECT FROM unnest(arrays)`` for all rows: a single statement and a handful of bind
    parameters however many rows, where executemany pays per row. Returns how many rows went in."""
    columns = tuple(rows[0])
    statement = _unnest_insert(table.name, columns, skip_conflicts)
    result = await conn.execute(statement, {name: [row[name] for row in rows] for name in columns})
    return len(result.all())


@functools.cache
def _unnest_insert(table_name: str, columns: tuple[str, ...], skip_conflicts: bool) -> TextClause:
    table = t.metadata.tables[table_name]
    arrays, values = [], []
    for name in columns:
        column_type = table.c[name].type
        if isinstance(column_type, JSONB):  # asyncpg sends JSON as text; cast each element back
            arrays.append(f"CAST(:{name} AS text[])")
            values.append(f"CAST({name} AS jsonb)")
        else:
            arrays.append(f"CAST(:{name} AS {column_type.compile(dialect=_DIALECT)}[])")
            values.append(name)
    listed = ", ".join(columns)
    sql = (
        f"INSERT INTO {table_name} ({listed}) SELECT {', '.join(values)} "
        f"FROM unnest({', '.join(arrays)}) AS v({listed})"
        + (" ON CONFLICT DO NOTHING" if skip_conflicts else "")
        + " RETURNING 1"
    )
    return text(sql)


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
