"""The nightly checks' SQL (`stocksync reconcile`): each check's query, streamed through a server-side cursor
a thousand rows at a time, and the few reads its repairs need. The SQL only narrows the rows to those that may
disagree (sums in one pass, a full outer join); the checks judge each row with the core.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Row, Text, any_, bindparam, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from stocksync.adapters import tables as t
from stocksync.domain.model import EventKey, Position, PositionKey

BATCH = 1000


async def stream_rows(
    conn: AsyncConnection, statement: Any, params: dict | None = None, size: int = BATCH
) -> AsyncIterator[list[Row]]:
    """A server-side cursor, read ``size`` rows at a time: memory holds one partition."""
    result = await conn.stream(statement, params or {})
    async for partition in result.partitions(size):
        yield partition


async def schema_ready(conn: AsyncConnection) -> None:
    """Raises if the ledger's tables are not there (not migrated) or the database does not answer."""
    await conn.execute(text("SELECT 1 FROM positions LIMIT 0"))


async def table_sizes(conn: AsyncConnection) -> dict[str, int]:
    return {
        table.name: int(await conn.scalar(select(func.count()).select_from(table)) or 0)
        for table in (t.positions, t.movements)
    }


# -- checks 1 and 2: positions against movements and holds, and the reservations ------------------------------

# One GROUP BY over positions, movements and held lines together works as a full outer join of the three:
# a movement or held line with no position shows, and so does a position with no movement.
_TOTALS = text(
    """
    SELECT location_id, sku,
           max(on_hand) AS on_hand, max(reserved) AS reserved, max(damaged) AS damaged, max(version) AS version,
           coalesce(sum(m_on_hand), 0)::bigint AS movement_on_hand,
           coalesce(sum(m_reserved), 0)::bigint AS movement_reserved,
           coalesce(sum(m_damaged), 0)::bigint AS movement_damaged,
           count(m_on_hand) AS movements, coalesce(sum(held), 0)::bigint AS held
    FROM (
        SELECT location_id, sku, on_hand, reserved, damaged, version,
               NULL::bigint AS m_on_hand, NULL::bigint AS m_reserved, NULL::bigint AS m_damaged,
               NULL::bigint AS held
        FROM positions
        UNION ALL
        SELECT location_id, sku, NULL, NULL, NULL, NULL, on_hand_delta, reserved_delta, damaged_delta, NULL
        FROM movements
        UNION ALL
        SELECT r.location_id, l.sku, NULL, NULL, NULL, NULL, NULL, NULL, NULL, l.qty
        FROM reservations r JOIN reservation_lines l USING (reservation_id, location_id)
        WHERE r.status = 'held'
    ) AS u
    GROUP BY location_id, sku
    HAVING max(version) IS NULL
        OR max(on_hand) <> coalesce(sum(m_on_hand), 0)
        OR max(damaged) <> coalesce(sum(m_damaged), 0)
        OR max(reserved) <> coalesce(sum(held), 0)
        OR max(reserved) <> coalesce(sum(m_reserved), 0)
        OR max(version) <> count(m_on_hand)
    """
)

_OVERDUE = text(
    """
    SELECT r.reservation_id, r.location_id, r.expires_at,
           array_agg(l.sku ORDER BY l.line_no) AS skus, array_agg(l.qty ORDER BY l.line_no) AS qtys
    FROM reservations r JOIN reservation_lines l USING (reservation_id, location_id)
    WHERE r.status = 'held' AND r.expires_at <= :cutoff  -- due (`is_due`) since before the grace
    GROUP BY r.reservation_id, r.location_id
    ORDER BY r.location_id, r.expires_at, r.reservation_id
    """
)

# Held lines per position where they add up to more than on_hand (grouped by position; the core orders them).
_AT_RISK = text(
    """
    WITH held AS (
        SELECT r.location_id, l.sku, r.reservation_id, l.qty, r.created_at,
               sum(l.qty) OVER (PARTITION BY r.location_id, l.sku) AS total
        FROM reservations r JOIN reservation_lines l USING (reservation_id, location_id)
        WHERE r.status = 'held'
    )
    SELECT h.location_id, h.sku, coalesce(p.on_hand, 0) AS on_hand, h.reservation_id, h.qty, h.created_at
    FROM held h LEFT JOIN positions p ON p.location_id = h.location_id AND p.sku = h.sku
    WHERE h.total > coalesce(p.on_hand, 0)
    ORDER BY h.location_id, h.sku
    """
)


def disagreeing_totals(conn: AsyncConnection) -> AsyncIterator[list[Row]]:
    return stream_rows(conn, _TOTALS)


def overdue_reservations(conn: AsyncConnection, cutoff: datetime) -> AsyncIterator[list[Row]]:
    return stream_rows(conn, _OVERDUE, {"cutoff": cutoff})


def holds_beyond_on_hand(conn: AsyncConnection) -> AsyncIterator[list[Row]]:
    """Held lines of the positions whose holds add up to more than on_hand, grouped by position."""
    return stream_rows(conn, _AT_RISK)


async def reservation_statuses(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(reservation_id, location_id) -> status, for the keys that exist."""
    r = t.reservations.c
    rows = await conn.execute(
        select(r.reservation_id, r.location_id, r.status).where(
            tuple_(r.reservation_id, r.location_id).in_(keys)
        )
    )
    return {(row.reservation_id, row.location_id): row.status for row in rows}


# -- check 3: no event lost -----------------------------------------------------------------------------------


async def recorded_keys(conn: AsyncConnection, event_ids: Iterable[str]) -> set[EventKey]:
    """Where each of these ids was recorded: an event is its location and its id together (rule 10)."""
    e = t.processed_events.c
    ids = bindparam("ids", list(event_ids), type_=ARRAY(Text))  # one array parameter, not a thousand
    rows = await conn.execute(select(e.location_id, e.event_id).where(e.event_id == any_(ids)))
    return {(row.location_id, row.event_id) for row in rows}


# -- check 4: the outbox and the bucket -----------------------------------------------------------------------


STUCK_BATCH = 50  # bundles of up to 500 events, some 200 KB each: a partition stays near 10 MB


def stuck_outbox(conn: AsyncConnection, cutoff: datetime) -> AsyncIterator[list[Row]]:
    """Outbox rows unrelayed since ``cutoff`` or before, in id order, with their payloads (a bundle's names
    its messages): a few dozen at a time, as a bundle holds a whole transaction's messages."""
    o = t.outbox.c
    stuck = (
        select(o.id, o.subject, o.msg_id, o.payload, o.traceparent, o.created_at)
        .where(o.relayed_at.is_(None), o.created_at <= cutoff)
        .order_by(o.id)
    )
    return stream_rows(conn, stuck, size=STUCK_BATCH)


async def unrelayed(conn: AsyncConnection, ids: list[int]) -> set[int]:
    o = t.outbox.c
    return set((await conn.scalars(select(o.id).where(o.id.in_(ids), o.relayed_at.is_(None)))).all())


_KV_TABLE = text(
    """
    CREATE TEMPORARY TABLE reconcile_kv (
        location_id text NOT NULL, sku text NOT NULL, problem text,
        on_hand bigint, reserved bigint, damaged bigint, safety_stock bigint, available bigint, version bigint,
        PRIMARY KEY (location_id, sku)
    ) ON COMMIT DROP
    """
)
_KV_INSERT = text(
    """
    INSERT INTO reconcile_kv
    SELECT * FROM unnest(CAST(:location_id AS text[]), CAST(:sku AS text[]), CAST(:problem AS text[]),
        CAST(:on_hand AS bigint[]), CAST(:reserved AS bigint[]), CAST(:damaged AS bigint[]),
        CAST(:safety_stock AS bigint[]), CAST(:available AS bigint[]), CAST(:version AS bigint[]))
    ON CONFLICT DO NOTHING
    """
)
BUCKET_NUMBERS = ("on_hand", "reserved", "damaged", "safety_stock", "version")
# A position is in flight while an outbox row of its availability is unrelayed (a bundle's ``kv_key`` names each
# of its messages' keys, separated by spaces, which no key holds): the relay has yet to write
# the bucket (and past the grace, the outbox check names that row). Once relayed, an entry behind is stale,
# however recent the change: the relay publishes before it marks the row, and the check waits for the bucket
# to have sourced the out stream.
_KV_DIFFERENCES = text(
    f"""
    WITH pending AS (
        SELECT DISTINCT unnest(string_to_array(kv_key, ' ')) AS kv_key FROM outbox
        WHERE relayed_at IS NULL AND kv_key IS NOT NULL
    )
    SELECT coalesce(p.location_id, k.location_id) AS location_id, coalesce(p.sku, k.sku) AS sku,
           p.location_id IS NOT NULL AS in_ledger, pending.kv_key IS NOT NULL AS in_flight,
           {", ".join(f"p.{n}" for n in BUCKET_NUMBERS)},
           k.location_id IS NOT NULL AS in_bucket, k.problem,
           {", ".join(f"k.{n} AS k_{n}" for n in (*BUCKET_NUMBERS, "available"))}
    FROM positions p FULL JOIN reconcile_kv k ON k.location_id = p.location_id AND k.sku = p.sku
    LEFT JOIN pending ON pending.kv_key = p.location_id || '.' || p.sku
    WHERE p.location_id IS NULL OR k.location_id IS NULL OR k.problem IS NOT NULL
       OR ({", ".join(f"k.{n}" for n in BUCKET_NUMBERS)}) IS DISTINCT FROM ({", ".join(f"p.{n}" for n in BUCKET_NUMBERS)})
    """
)


async def create_bucket_table(conn: AsyncConnection) -> None:
    """A temporary table for the bucket's entries, dropped at the end of the transaction."""
    await conn.execute(_KV_TABLE)


async def insert_bucket_entries(conn: AsyncConnection, columns: dict[str, list]) -> None:
    await conn.execute(_KV_INSERT, columns)


async def bucket_differences(conn: AsyncConnection) -> AsyncIterator[list[Row]]:
    """Entries that differ from their position, and positions with no entry (after ANALYZE of the table)."""
    await conn.execute(text("ANALYZE reconcile_kv"))
    async for partition in stream_rows(conn, _KV_DIFFERENCES):
        yield partition


async def positions_as_of(
    conn: AsyncConnection, keys: list[PositionKey]
) -> dict[PositionKey, tuple[Position, datetime]]:
    """Positions read fresh, with when each last changed (the ``as_of`` the relay would publish)."""
    p = t.positions.c
    columns = [p[name] for name in Position.__struct_fields__]
    rows = await conn.execute(
        select(*columns, p.updated_at).where(func.row(p.location_id, p.sku).in_([func.row(*k) for k in keys]))
    )
    return {
        (row.location_id, row.sku): (
            Position(**{n: getattr(row, n) for n in Position.__struct_fields__}),
            row.updated_at,
        )
        for row in rows
    }


# -- check 5: store counts ------------------------------------------------------------------------------------

_AS_OF = text(
    """
    SELECT k.i,
           coalesce(sum(m.on_hand_delta) FILTER (WHERE m.occurred_at < k.at OR m.type = 'count'), 0)::bigint
               AS as_of,
           max(p.last_count_at) AS last_count_at
    FROM unnest(CAST(:locations AS text[]), CAST(:skus AS text[]), CAST(:ats AS timestamptz[]))
         WITH ORDINALITY AS k(location_id, sku, at, i)
    LEFT JOIN positions p ON p.location_id = k.location_id AND p.sku = k.sku
    LEFT JOIN movements m ON m.location_id = k.location_id AND m.sku = k.sku AND m.occurred_at <= k.at
    GROUP BY k.i
    ORDER BY k.i
    """
)


async def location_ids(conn: AsyncConnection) -> frozenset[str]:
    return frozenset((await conn.scalars(select(t.locations.c.location_id))).all())


async def ledger_as_of(conn: AsyncConnection, counted: list[tuple[str, str, datetime]]) -> list[Row]:
    """For each (location, sku, instant) in order: on_hand as of that instant and the latest count's time."""
    params = {
        "locations": [c[0] for c in counted],
        "skus": [c[1] for c in counted],
        "ats": [c[2] for c in counted],
    }
    return list((await conn.execute(_AS_OF, params)).all())
