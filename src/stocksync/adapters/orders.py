"""Online orders as rows: the order itself; its allocations are reservations (``adapters.ledger_store``)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from stocksync.adapters import tables as t
from stocksync.adapters.ledger_store import lock_reservations, read_reservations
from stocksync.domain.model import Reservation, ReservationLine, Shortage
from stocksync.domain.orders import Allocation, Order


class StoredOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order row and the reservations of its allocations, as read (the status as stored)."""

    order: Order
    body_hash: bytes
    reservations: tuple[Reservation, ...]


_READ = "SELECT * FROM orders WHERE order_id = :id"
_SET_STATUS = text("UPDATE orders SET status = :status, updated_at = :now WHERE order_id = :id")


async def read_order(conn: AsyncConnection, order_id: str, *, lock: bool = False) -> StoredOrder | None:
    """The order and its allocations' reservations; ``lock``: both locked (order first, then reservations
    in the ledger's own order)."""
    row = (await conn.execute(text(_READ + (" FOR UPDATE" if lock else "")), {"id": order_id})).first()
    if row is None:
        return None
    keys = [(location_id, order_id) for location_id in row.locations]
    found = await (lock_reservations if lock else read_reservations)(conn, keys)
    reservations = tuple(found[key] for key in keys if key in found)
    order = Order(
        order_id=row.order_id,
        channel_id=row.channel_id,
        status=row.status,
        lines=tuple(msgspec.convert(row.lines, list[ReservationLine])),
        allocations=tuple(Allocation(location_id=r.location_id, lines=r.lines) for r in reservations),
        created_at=row.created_at,
        expires_at=row.expires_at,
        reference=row.reference,
        shortages=tuple(msgspec.convert(row.shortages or [], list[Shortage])),
    )
    return StoredOrder(order=order, body_hash=row.body_hash, reservations=reservations)


async def insert_order(
    conn: AsyncConnection,
    order: Order,
    *,
    body_hash: bytes,
    ttl_seconds: int,
    ship_to: tuple[float, float] | None,
) -> bool:
    """False when another transaction placed the same order id first (the caller retries and finds it)."""
    statement = insert(t.orders).on_conflict_do_nothing().returning(t.orders.c.order_id)
    row = {
        "order_id": order.order_id,
        "channel_id": order.channel_id,
        "status": order.status,
        "lines": msgspec.to_builtins(order.lines),
        "locations": [a.location_id for a in order.allocations],
        "shortages": msgspec.to_builtins(order.shortages) if order.shortages else None,
        "ship_to_lat": ship_to[0] if ship_to else None,
        "ship_to_lon": ship_to[1] if ship_to else None,
        "ttl_seconds": ttl_seconds,
        "reference": order.reference,
        "body_hash": body_hash,
        "created_at": order.created_at,
        "expires_at": order.expires_at,
        "updated_at": order.created_at,
    }
    return (await conn.execute(statement, row)).first() is not None


async def set_status(conn: AsyncConnection, order_id: str, status: str, now: datetime) -> None:
    await conn.execute(_SET_STATUS, {"id": order_id, "status": status, "now": now})
