"""Checks 1 and 2: every position against its movements and held lines, and the reservations.

The sums are computed by PostgreSQL in one pass and only the rows that disagree come back, through a
server-side cursor, so a million movements cost the client nothing but the mismatches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sqlalchemy import Row, func, select, text, tuple_

from stocksync.adapters import tables as t
from stocksync.domain.ledger import HeldLine, oldest_first
from stocksync.domain.reconciliation import (
    Finding,
    PositionTotals,
    at_risk_findings,
    integrity_findings,
    overdue_finding,
)
from stocksync.service.reconciliation.context import Context, Findings, not_repaired, repaired, stream_rows
from stocksync.service.sweeper import ExpirySweeper

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


async def ledger_sizes(ctx: Context) -> dict[str, int]:
    """How much was checked, for the report."""
    async with ctx.engine.connect() as conn:
        return {
            table.name: int(await conn.scalar(select(func.count()).select_from(table)) or 0)
            for table in (t.positions, t.movements)
        }


async def check_integrity(ctx: Context) -> Findings:
    """Rules 2 and 3 for every position, judged by the core on the rows SQL found disagreeing."""
    ctx.progress.phase("ledger integrity")
    async with ctx.engine.connect() as conn:
        async for rows in stream_rows(conn, _TOTALS):
            yield [f for row in rows for f in integrity_findings(PositionTotals(**row._asdict()))]


async def check_overdue(ctx: Context) -> Findings:
    """Held past expiry (the sweeper fell behind); --repair runs the sweeper, the path that normally expires."""
    ctx.progress.phase("reservations")
    swept = False
    async with ctx.engine.connect() as conn:
        async for rows in stream_rows(conn, _OVERDUE, {"cutoff": ctx.cutoff}):
            findings = [
                overdue_finding(r.reservation_id, r.location_id, r.expires_at, r.skus, r.qtys) for r in rows
            ]
            if ctx.options.repair:
                if not swept:
                    await _sweep(ctx)
                    swept = True
                findings = await _expired(ctx, findings)
            yield findings


async def _sweep(ctx: Context) -> None:
    sweeper = ExpirySweeper(ctx.engine, ctx.ledger)
    while await sweeper.sweep_once() == sweeper.batch:
        pass


async def _expired(ctx: Context, findings: Sequence[Finding]) -> list[Finding]:
    """Each finding judged by its own reservation: the same id at another location is another one."""
    r = t.reservations.c
    keys = [(f.reservation_id, f.location_id) for f in findings]
    async with ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(r.reservation_id, r.location_id, r.status).where(
                tuple_(r.reservation_id, r.location_id).in_(keys)
            )
        )
        status = {(row.reservation_id, row.location_id): row.status for row in rows}
    return [
        repaired(f, "expired by the sweeper")
        if status.get(key) == "expired"
        else not_repaired(f, f"still {status.get(key)}")
        for f, key in zip(findings, keys, strict=True)
    ]


async def check_at_risk(ctx: Context) -> Findings:
    """Rule 4 as it stands tonight: the reservations on_hand no longer covers, position by position."""
    async with ctx.engine.connect() as conn:
        async for group in _by_position(stream_rows(conn, _AT_RISK)):
            first = group[0]
            lines = (
                HeldLine(reservation_id=r.reservation_id, qty=r.qty, created_at=r.created_at) for r in group
            )
            held = [(line.reservation_id, line.qty) for line in oldest_first(lines)]
            yield at_risk_findings(first.location_id, first.sku, first.on_hand, held)


async def _by_position(partitions: AsyncIterator[list[Row]]) -> AsyncIterator[list[Row]]:
    """Regroup rows ordered by position into one list per position, across partition boundaries."""
    group: list[Row] = []
    async for rows in partitions:
        for row in rows:
            if group and (row.location_id, row.sku) != (group[0].location_id, group[0].sku):
                yield group
                group = []
            group.append(row)
    if group:
        yield group
