"""Choosing pickup stores for a basket: pure, so the ranking is tested without a database."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from stocksync_contract.messages import PickupLine, PickupStore

from .ledger import merge_lines
from .model import Location, Position, PositionKey, ReservationLine

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)

LatLon = tuple[float, float]


def great_circle_km(a: LatLon, b: LatLon) -> float:
    """Haversine distance between two (lat, lon) points in degrees; accurate to ~0.5 % on a sphere."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def pickup_stores(
    stores: Iterable[Location],
    positions: Mapping[PositionKey, Position],
    wanted: Sequence[ReservationLine],
    *,
    near: LatLon | None = None,
    limit: int = 10,
) -> list[PickupStore]:
    """Pickup-enabled stores where every wanted line fits what is available now (the test of rule 5).

    Nearest first when ``near`` is given (stores without coordinates last), otherwise by location id.
    A sku asked for twice counts once with the quantities summed.
    """
    lines = merge_lines(wanted)
    ranked: list[tuple[float, str, PickupStore]] = []
    for store in stores:
        if not store.pickup_enabled:
            continue
        found = tuple(_line(positions, store.location_id, line.sku) for line in lines)
        if any(have.available < line.qty for have, line in zip(found, lines, strict=True)):
            continue
        distance = _distance(store, near)
        body = PickupStore(
            location_id=store.location_id,
            name=store.name,
            lines=found,
            distance_km=None if distance is None else round(distance, 1),
        )
        ranked.append((math.inf if distance is None else distance, store.location_id, body))
    ranked.sort(key=lambda entry: entry[:2])
    return [body for _, _, body in ranked[:limit]]


def _line(positions: Mapping[PositionKey, Position], location_id: str, sku: str) -> PickupLine:
    position = positions.get((location_id, sku))
    return PickupLine(sku=sku, available=position.available if position else 0)


def _distance(store: Location, near: LatLon | None) -> float | None:
    if near is None or store.lat is None or store.lon is None:
        return None
    return great_circle_km(near, (store.lat, store.lon))
