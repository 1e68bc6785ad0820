"""Online orders (spec section 7): where an order's lines are taken from, and what state it is in. Pure.

An order is allocated whole or not at all. Its allocations are reservations (rules 5–7) at the chosen
locations, each named by the order id; shipping collects every one, cancelling releases every one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from msgspec import Struct

from .channels import Channel, channel_stock
from .errors import InsufficientStock, OrderNotAllocated
from .ledger import is_due, merge_lines
from .model import Location, Position, PositionKey, Reservation, ReservationLine, Shortage
from .pickup import LatLon, great_circle_km

OrderStatus = Literal["allocated", "shipped", "cancelled", "expired", "rejected"]
# Location sets tried in `source` before it settles for the greedy fill: a channel of 20 locations
# has 1,140 sets of three; the bound keeps an order of many lines over a large channel from spinning.
MAX_SETS_TRIED = 20_000


class Allocation(Struct, frozen=True, kw_only=True):
    """The lines one location gives to an order: one reservation there."""

    location_id: str
    lines: tuple[ReservationLine, ...]


class Order(Struct, frozen=True, kw_only=True):
    order_id: str
    channel_id: str
    status: OrderStatus
    lines: tuple[ReservationLine, ...]
    allocations: tuple[Allocation, ...]
    created_at: datetime
    expires_at: datetime
    reference: str | None = None
    shortages: tuple[Shortage, ...] = ()


def ranked_locations(
    channel: Channel, locations: Mapping[str, Location], ship_to: LatLon | None
) -> list[str]:
    """The channel's locations in the order sourcing prefers them: nearest to ``ship_to`` first when given
    (locations without coordinates after those with, in priority order), else the channel's priority."""
    if ship_to is None:
        return list(channel.locations)

    def rank(entry: tuple[int, str]) -> tuple[float, int]:
        priority, location_id = entry
        where = locations.get(location_id)
        if where is None or where.lat is None or where.lon is None:
            return math.inf, priority
        return great_circle_km(ship_to, (where.lat, where.lon)), priority

    return [location_id for _, location_id in sorted(enumerate(channel.locations), key=rank)]


def source(
    lines: Sequence[ReservationLine],
    channel: Channel,
    positions: Mapping[PositionKey, Position],
    locations: Mapping[str, Location],
    ship_to: LatLon | None = None,
) -> tuple[Allocation, ...]:
    """The allocations of a whole order, or `InsufficientStock` with the channel-level shortages.

    One location holding every line if there is one (the first in `ranked_locations`); otherwise the fewest
    locations, the first such set in that order, each giving what it has in that order. The channel's
    buffer is never sold: a line fits when its quantity is at most the channel's available.
    """
    wanted = merge_lines(lines)
    missing = tuple(
        Shortage(sku=line.sku, requested=line.qty, available=stock.available)
        for line in wanted
        if line.qty > (stock := channel_stock(channel, line.sku, positions)).available
    )
    if missing:
        raise InsufficientStock(
            f"channel {channel.channel_id!r} cannot sell {len(missing)} line(s) of the order",
            shortages=missing,
        )
    order = ranked_locations(channel, locations, ship_to)
    have = {
        (location_id, line.sku): position.available
        if (position := positions.get((location_id, line.sku)))
        else 0
        for location_id in order
        for line in wanted
    }
    return _allocate(wanted, _fewest(wanted, order, have), have)


def _fewest(
    wanted: Sequence[ReservationLine], order: Sequence[str], have: Mapping[tuple[str, str], int]
) -> Sequence[str]:
    """The first smallest set of locations (in ``order``) that holds every line between them."""
    tried = 0
    for size in range(1, len(order) + 1):
        for chosen in itertools.combinations(order, size):
            if all(sum(have[(loc, line.sku)] for loc in chosen) >= line.qty for line in wanted):
                return chosen
            tried += 1
            if tried >= MAX_SETS_TRIED:
                return order  # the greedy fill in order: never more locations than needed in that order
    return order


def _allocate(
    wanted: Sequence[ReservationLine], chosen: Sequence[str], have: Mapping[tuple[str, str], int]
) -> tuple[Allocation, ...]:
    remaining = {line.sku: line.qty for line in wanted}
    allocations = []
    for location_id in chosen:
        taken = []
        for line in wanted:
            qty = min(remaining[line.sku], have[(location_id, line.sku)])
            if qty > 0:
                taken.append(ReservationLine(sku=line.sku, qty=qty))
                remaining[line.sku] -= qty
        if taken:
            allocations.append(Allocation(location_id=location_id, lines=tuple(taken)))
    assert not any(remaining.values()), "source() checked the channel covers every line"
    return tuple(allocations)


def order_status(stored: OrderStatus, reservations: Sequence[Reservation], now: datetime) -> OrderStatus:
    """An allocated order whose allocations are expired (or due: rule 7, whoever asks first) is expired."""
    if stored == "allocated" and any(r.status == "expired" or is_due(r, now) for r in reservations):
        return "expired"
    return stored


def must_settle(
    order: Order, reservations: Sequence[Reservation], target: Literal["shipped", "cancelled"], now: datetime
) -> bool:
    """Whether shipping or cancelling has something to do: False when the order is already ``target`` (the
    same answer again); `OrderNotAllocated` with its status when it is anything else but allocated."""
    status = order_status(order.status, reservations, now)
    if status == target:
        return False
    if status != "allocated":
        raise OrderNotAllocated(f"order {order.order_id!r} is {status}", status=status)
    return True
