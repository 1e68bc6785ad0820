"""Pickup store choice: distance, the every-line test and the ordering, without a database."""

from __future__ import annotations

import pytest

from stocksync.domain.model import Location, Position, ReservationLine
from stocksync.domain.pickup import great_circle_km, pickup_stores

AMSTERDAM = (52.3676, 4.9041)
ROTTERDAM = (51.9244, 4.4777)
UTRECHT = (52.0907, 5.1214)


def store(location_id: str, at: tuple[float, float] | None, *, pickup: bool = True) -> Location:
    lat, lon = at if at else (None, None)
    return Location(
        location_id=location_id,
        kind="store",
        name=location_id.title(),
        pickup_enabled=pickup,
        lat=lat,
        lon=lon,
    )


def stock(location_id: str, sku: str, on_hand: int, *, reserved: int = 0, safety_stock: int = 0):
    return (location_id, sku), Position(
        location_id=location_id,
        sku=sku,
        on_hand=on_hand,
        reserved=reserved,
        safety_stock=safety_stock,
        version=1,
    )


def lines(**wanted: int) -> list[ReservationLine]:
    return [ReservationLine(sku=sku, qty=qty) for sku, qty in wanted.items()]


def test_great_circle_distances_are_known_ones() -> None:
    assert great_circle_km(AMSTERDAM, AMSTERDAM) == 0
    assert great_circle_km(AMSTERDAM, ROTTERDAM) == pytest.approx(57.0, abs=1.0)
    assert great_circle_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(20015.1, abs=1.0)  # half the equator
    assert great_circle_km(AMSTERDAM, UTRECHT) == pytest.approx(great_circle_km(UTRECHT, AMSTERDAM))


def test_nearest_first_with_distance_rounded_and_coordinate_less_stores_last() -> None:
    stores = [
        store("rdam", ROTTERDAM),
        store("nowhere", None),
        store("utr", UTRECHT),
        store("adam", AMSTERDAM),
    ]
    positions = dict(stock(s.location_id, "A", 5) for s in stores)
    found = pickup_stores(stores, positions, lines(A=1), near=(52.37, 4.90))
    assert [s.location_id for s in found] == ["adam", "utr", "rdam", "nowhere"]
    assert found[0].distance_km == 0.4  # 0.27 km north-south, 0.28 km east-west
    assert found[-1].distance_km is None
    assert all(d.distance_km == round(d.distance_km, 1) for d in found[:-1])


def test_without_near_stores_come_by_id_with_no_distance() -> None:
    stores = [store("b", UTRECHT), store("a", ROTTERDAM)]
    positions = dict(stock(s.location_id, "A", 1) for s in stores)
    found = pickup_stores(stores, positions, lines(A=1))
    assert [(s.location_id, s.distance_km) for s in found] == [("a", None), ("b", None)]


def test_only_stores_that_hold_every_line_now() -> None:
    stores = [
        store("full", AMSTERDAM),
        store("short", UTRECHT),
        store("buffered", ROTTERDAM),
        store("closed", AMSTERDAM, pickup=False),
    ]
    positions = dict(
        [
            stock("full", "A", 3),
            stock("full", "B", 1),
            stock("short", "A", 3),  # no B at all
            stock("buffered", "A", 3),
            stock("buffered", "B", 2, reserved=1, safety_stock=1),  # available 0
            stock("closed", "A", 9),
            stock("closed", "B", 9),
        ]
    )
    found = pickup_stores(stores, positions, lines(A=3, B=1), near=AMSTERDAM)
    assert [s.location_id for s in found] == ["full"]
    assert [(line.sku, line.available) for line in found[0].lines] == [("A", 3), ("B", 1)]


def test_a_sku_asked_twice_needs_the_sum() -> None:
    stores = [store("s", AMSTERDAM)]
    positions = dict([stock("s", "A", 3)])
    twice = [ReservationLine(sku="A", qty=2), ReservationLine(sku="A", qty=2)]
    assert pickup_stores(stores, positions, twice) == []
    assert len(pickup_stores(stores, positions, twice[:1])) == 1


def test_limit_keeps_the_nearest() -> None:
    stores = [store(f"s{i}", (52.0 + i / 10, 5.0)) for i in range(5)]
    positions = dict(stock(s.location_id, "A", 1) for s in stores)
    found = pickup_stores(stores, positions, lines(A=1), near=(52.31, 5.0), limit=2)
    assert [s.location_id for s in found] == ["s3", "s4"]
