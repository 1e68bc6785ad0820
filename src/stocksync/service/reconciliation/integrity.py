"""Checks 1 and 2: every position against its movements and held lines, and the reservations.

The sums are computed by PostgreSQL in one pass and only the rows that disagree come back, through a
server-side cursor, so a million movements cost the client nothing but the mismatches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sqlalchemy import Row

from stocksync.adapters import reconciliation as sql
from stocksync.domain.ledger import HeldLine, oldest_first
from stocksync.domain.reconciliation import (
    Finding,
    PositionTotals,
    at_risk_findings,
    integrity_findings,
    overdue_finding,
)
from stocksync.service.reconciliation.context import Context, Findings, not_repaired, repaired
from stocksync.service.sweeper import ExpirySweeper


async def ledger_sizes(ctx: Context) -> dict[str, int]:
    """How much was checked, for the report."""
    async with ctx.engine.connect() as conn:
        return await sql.table_sizes(conn)


async def check_integrity(ctx: Context) -> Findings:
    """Rules 2 and 3 for every position, judged by the core on the rows SQL found disagreeing."""
    ctx.progress.phase("ledger integrity")
    async with ctx.engine.connect() as conn:
        async for rows in sql.disagreeing_totals(conn):
            yield [f for row in rows for f in integrity_findings(PositionTotals(**row._asdict()))]


async def check_overdue(ctx: Context) -> Findings:
    """Held past expiry (the sweeper fell behind); --repair runs the sweeper, the path that normally expires."""
    ctx.progress.phase("reservations")
    swept = False
    async with ctx.engine.connect() as conn:
        async for rows in sql.overdue_reservations(conn, ctx.cutoff):
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
    keys = [(f.reservation_id, f.location_id) for f in findings]
    async with ctx.engine.connect() as conn:
        status = await sql.reservation_statuses(conn, keys)
    return [
        repaired(f, "expired by the sweeper")
        if status.get(key) == "expired"
        else not_repaired(f, f"still {status.get(key)}")
        for f, key in zip(findings, keys, strict=True)
    ]


async def check_at_risk(ctx: Context) -> Findings:
    """Rule 4 as it stands tonight: the reservations on_hand no longer covers, position by position."""
    async with ctx.engine.connect() as conn:
        async for group in _by_position(sql.holds_beyond_on_hand(conn)):
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
