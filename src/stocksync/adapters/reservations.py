"""Reservation reads outside a batch: what is due for the sweeper (rule 7, `domain.ledger.is_due` in SQL, so
the index on held expiries finds them), and how many there are by status."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from stocksync.adapters import tables as t
from stocksync.domain.model import ReservationKey

_r = t.reservations.c


async def due_reservations(conn: AsyncConnection, now: datetime, limit: int) -> list[ReservationKey]:
    """Up to ``limit`` held reservations due at ``now`` (``is_due``), the longest due first."""
    due = (
        select(_r.location_id, _r.reservation_id)
        .where(_r.status == "held", _r.expires_at <= now)
        .order_by(_r.expires_at)
        .limit(limit)
    )
    return [(row.location_id, row.reservation_id) for row in await conn.execute(due)]


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(_r.status, func.count()).group_by(_r.status))
    return {status: n for status, n in rows}


async def held_due(conn: AsyncConnection, now: datetime, within: timedelta) -> tuple[int, int]:
    """Held reservations expiring within ``within`` of ``now``, and those already due (by the index on held
    expiries: only held rows are read)."""
    expiring = func.count().filter(_r.expires_at <= now + within)
    overdue = func.count().filter(_r.expires_at <= now)
    row = (await conn.execute(select(expiring, overdue).where(_r.status == "held"))).one()
    return int(row[0]), int(row[1])
