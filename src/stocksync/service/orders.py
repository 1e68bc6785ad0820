"""Online orders (spec section 7): placed whole or not at all, shipped, cancelled; one transaction each.

Placing locks every position the order could take from (its skus at each of the channel's locations, in the
ledger's global order), sources the order in the core on what it locked, and applies one ``reserve`` per
allocation through the same core and write as every other event: concurrent orders and till sales at those
stores wait for each other, so no unit is allocated twice and no order is half allocated. Shipping collects
every allocation, cancelling releases every one. HTTP and the NATS worker both come through here.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import orders as rows
from stocksync.adapters.channels import read_channels
from stocksync.adapters.ledger_store import (
    ConcurrentWrite,
    PostgresBatch,
    PostgresLedgerStore,
    load_locations,
    lock_positions,
)
from stocksync.clock import Clock, utc_now
from stocksync.domain.errors import (
    InsufficientStock,
    OrderIdConflict,
    OrderNotAllocated,
    ReservationNotHeld,
    UnknownChannel,
    UnknownOrder,
)
from stocksync.domain.events import Cancel, Collect, OrderRequest, QtyLine, Reserve
from stocksync.domain.ledger import merge_lines
from stocksync.domain.model import ReservationLine
from stocksync.domain.orders import Order, must_settle, order_status, source
from stocksync.service.ledger_service import LedgerService, apply_in, body_hash, traced
from stocksync.service.outbox import order_row, outbox_rows

Placed = tuple[Order, bool]  # the order, and whether this call placed it (False: answered as first placed)


def order_hash(request: OrderRequest) -> bytes:
    """What makes two placements of an order id the same order (lines merged, so their order is no matter)."""
    lines = [
        (line.sku, line.qty)
        for line in merge_lines(ReservationLine(sku=x.sku, qty=x.qty) for x in request.lines)
    ]
    ship_to = (request.ship_to.lat, request.ship_to.lon) if request.ship_to else None
    canonical = (request.channel_id, sorted(lines), ship_to, request.ttl_seconds, request.reference)
    return hashlib.sha256(msgspec.json.encode(canonical)).digest()


class OrderService:
    def __init__(self, engine: AsyncEngine, ledger: LedgerService, *, clock: Clock = utc_now) -> None:
        self.store = PostgresLedgerStore(engine)
        self.ledger = ledger  # for its retries on a concurrent create or a deadlock
        self.clock = clock

    async def place(self, request: OrderRequest, *, source_name: str) -> Placed:
        """Allocate the whole order or refuse it (`InsufficientStock`, recorded: the same id answers so);
        the same id with another body is `OrderIdConflict`; an unknown channel `UnknownChannel`."""
        order, placed = await self.ledger.retrying(lambda: self._place_once(request, source_name))
        if order.status == "rejected":  # raised after the commit that recorded it
            raise InsufficientStock(
                f"channel {order.channel_id!r} cannot sell the order whole", shortages=order.shortages
            )
        return order, placed

    async def ship(self, order_id: str) -> Order:
        return await self.ledger.retrying(lambda: self._settle_once(order_id, "shipped"))

    async def cancel(self, order_id: str) -> Order:
        return await self.ledger.retrying(lambda: self._settle_once(order_id, "cancelled"))

    async def read(self, order_id: str) -> Order:
        async with self.store.transaction() as batch:
            stored = await rows.read_order(batch.conn, order_id)
        if stored is None:
            raise UnknownOrder(f"order {order_id!r} is not known")
        return _as_now(stored, self.clock())

    async def _place_once(self, request: OrderRequest, source_name: str) -> Placed:
        now, digest = self.clock(), order_hash(request)
        async with self.store.transaction() as batch:
            stored = await rows.read_order(batch.conn, request.order_id, lock=True)
            if stored is not None:
                return _again(stored, digest, now), False
            order = await self._allocate(batch, request, now, source_name)
            ship_to = (request.ship_to.lat, request.ship_to.lon) if request.ship_to else None
            placed = await rows.insert_order(
                batch.conn, order, body_hash=digest, ttl_seconds=request.ttl_seconds, ship_to=ship_to
            )
            if not placed:
                raise ConcurrentWrite(f"order {request.order_id!r} was placed concurrently")
            return order, True

    async def _allocate(
        self, batch: PostgresBatch, request: OrderRequest, now: datetime, source_name: str
    ) -> Order:
        """Source on the locked positions and reserve at each allocation; a refused order is recorded too."""
        found = await read_channels(batch.conn, [request.channel_id])
        if not found:
            raise UnknownChannel(f"channel {request.channel_id!r} is not known")
        channel, lines = found[0], merge_lines(ReservationLine(sku=x.sku, qty=x.qty) for x in request.lines)
        keys = [(location, line.sku) for location in channel.locations for line in lines]
        positions = await lock_positions(batch.conn, keys)
        locations = await load_locations(batch.conn, channel.locations)
        ship_to = (request.ship_to.lat, request.ship_to.lon) if request.ship_to else None
        order = Order(
            order_id=request.order_id,
            channel_id=channel.channel_id,
            status="allocated",
            lines=lines,
            allocations=(),
            created_at=now,
            expires_at=now + timedelta(seconds=request.ttl_seconds),
            reference=request.reference,
        )
        try:
            allocations = source(lines, channel, positions, locations, ship_to)
        except InsufficientStock as short:
            order = msgspec.structs.replace(order, status="rejected", shortages=short.extra["shortages"])
            await batch.write_outbox([order_row(order)])
            return order
        order = msgspec.structs.replace(order, allocations=allocations)
        events = [_reserve(request, a.location_id, a.lines, now, source_name) for a in allocations]
        changes = await apply_in(batch, events, [body_hash(e) for e in events], now)
        if refused := [o for o in changes.outcomes if o.outcome != "applied"]:
            # Sourced on what this transaction holds locked, a reserve can only meet an id already taken.
            raise OrderIdConflict(f"order {request.order_id!r}: {refused[0].detail or refused[0].error}")
        await batch.write(changes, traced([*outbox_rows(changes), order_row(order)]))
        return order

    async def _settle_once(self, order_id: str, target: Literal["shipped", "cancelled"]) -> Order:
        now = self.clock()
        async with self.store.transaction() as batch:
            stored = await rows.read_order(batch.conn, order_id, lock=True)
            if stored is None:
                raise UnknownOrder(f"order {order_id!r} is not known")
            if not must_settle(stored.order, stored.reservations, target, now):
                return _as_now(stored, now)
            kind = Collect if target == "shipped" else Cancel
            events = [
                kind(
                    event_id=f"order:{order_id}:{target}",
                    location_id=a.location_id,
                    occurred_at=now,
                    reservation_id=order_id,
                )
                for a in stored.order.allocations
            ]
            changes = await apply_in(batch, events, [body_hash(e) for e in events], now)
            if refused := [o for o in changes.outcomes if o.outcome == "rejected"]:
                status = "expired" if refused[0].error == ReservationNotHeld.code else stored.order.status
                raise OrderNotAllocated(f"order {order_id!r} is {status}", status=status)
            order = msgspec.structs.replace(stored.order, status=target)
            await rows.set_status(batch.conn, order_id, target, now)
            await batch.write(changes, traced([*outbox_rows(changes), order_row(order)]))
            return order


def _reserve(
    request: OrderRequest,
    location_id: str,
    lines: tuple[ReservationLine, ...],
    now: datetime,
    source_name: str,
) -> Reserve:
    return Reserve(
        event_id=f"order:{request.order_id}",
        location_id=location_id,
        occurred_at=now,
        source=source_name,
        reference=request.reference,
        reservation_id=request.order_id,
        channel="ecommerce",
        ttl_seconds=request.ttl_seconds,
        lines=[QtyLine(sku=line.sku, qty=line.qty) for line in lines],
    )


def _again(stored: rows.StoredOrder, digest: bytes, now: datetime) -> Order:
    """The first outcome of an order id placed again: the order, or its refusal; another body conflicts."""
    if stored.body_hash != digest:
        raise OrderIdConflict(f"order {stored.order.order_id!r} was already placed with another body")
    return _as_now(stored, now)


def _as_now(stored: rows.StoredOrder, now: datetime) -> Order:
    status = order_status(stored.order.status, stored.reservations, now)
    return msgspec.structs.replace(stored.order, status=status)
