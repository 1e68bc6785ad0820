"""The sourcing rule of online orders (spec section 7) as a pure function: which locations give what."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stocksync.domain.channels import Channel, channel_available, channel_stock
from stocksync.domain.errors import InsufficientStock
from stocksync.domain.model import Location, Position, ReservationLine
from stocksync.domain.orders import Allocation, ranked_locations, source

WEB = Channel(channel_id="web", name="Web", locations=("wh", "online", "ams", "rot"))
PLACES = {
    "wh": Location(location_id="wh", kind="warehouse", name="Warehouse"),  # no coordinates
    "online": Location(location_id="online", kind="online", name="Online", lat=52.0, lon=5.0),
    "ams": Location(location_id="ams", kind="store", name="Amsterdam", lat=52.37, lon=4.89),
    "rot": Location(location_id="rot", kind="store", name="Rotterdam", lat=51.92, lon=4.48),
}


def stock(**at: dict[str, int]) -> dict:
    return {
        (loc, sku): Position(location_id=loc, sku=sku, on_hand=qty)
        for loc, skus in at.items()
        for sku, qty in skus.items()
    }


def lines(**qty: int) -> list[ReservationLine]:
    return [ReservationLine(sku=sku, qty=n) for sku, n in qty.items()]


def test_channel_available_is_the_sum_less_the_buffer_never_below_zero():
    assert channel_available(0, [3, 4]) == 7
    assert channel_available(5, [3, 4]) == 2
    assert channel_available(9, [3, 4]) == 0
    positions = {
        **stock(ams={"a": 5}),
        ("rot", "a"): Position(location_id="rot", sku="a", on_hand=4, reserved=6),
    }
    seen = channel_stock(WEB, "a", positions)
    assert seen.available == 5  # a location over-reserved adds nothing, never less than nothing
    assert [(x.location_id, x.available) for x in seen.locations] == [
        ("wh", 0),
        ("online", 0),
        ("ams", 5),
        ("rot", 0),
    ]


def test_one_location_that_holds_every_line_is_the_first_by_priority():
    positions = stock(wh={"a": 1}, online={"a": 2, "b": 1}, ams={"a": 5, "b": 5})
    assert source(lines(a=2, b=1), WEB, positions, PLACES) == (
        Allocation(location_id="online", lines=tuple(lines(a=2, b=1))),
    )


def test_with_ship_to_the_nearest_location_that_holds_everything_wins():
    positions = stock(online={"a": 3}, ams={"a": 3}, rot={"a": 3})
    near_rotterdam = (51.9, 4.5)
    assert source(lines(a=2), WEB, positions, PLACES, near_rotterdam)[0].location_id == "rot"
    near_amsterdam = (52.4, 4.9)
    assert source(lines(a=2), WEB, positions, PLACES, near_amsterdam)[0].location_id == "ams"


def test_locations_without_coordinates_rank_after_those_with():
    assert ranked_locations(WEB, PLACES, (51.9, 4.5)) == ["rot", "online", "ams", "wh"]
    assert ranked_locations(WEB, PLACES, None) == ["wh", "online", "ams", "rot"]


def test_otherwise_the_fewest_locations_in_that_order():
    # wh+online+ams would cover (three), rot alone cannot, ams+rot (two) can: two locations, not three.
    positions = stock(wh={"a": 1}, online={"a": 1}, ams={"a": 2}, rot={"a": 3})
    got = source(lines(a=5), WEB, positions, PLACES)
    assert [(a.location_id, a.lines[0].qty) for a in got] == [("ams", 2), ("rot", 3)]


def test_lines_split_across_locations_take_from_the_first_first():
    positions = stock(wh={"a": 2, "b": 0}, online={"b": 2}, ams={"a": 1})
    got = source(lines(a=2, b=2), WEB, positions, PLACES)
    assert got == (
        Allocation(location_id="wh", lines=tuple(lines(a=2))),
        Allocation(location_id="online", lines=tuple(lines(b=2))),
    )


def test_short_of_the_channel_is_refused_whole_with_channel_level_shortages():
    positions = stock(wh={"a": 2}, ams={"a": 3, "b": 1})
    buffered = Channel(channel_id="web", name="Web", locations=WEB.locations, buffer=2)
    with pytest.raises(InsufficientStock) as refused:
        source(lines(a=4, b=1), buffered, positions, PLACES)
    assert [(s.sku, s.requested, s.available) for s in refused.value.extra["shortages"]] == [
        ("a", 4, 3),
        ("b", 1, 0),
    ]


@given(
    st.lists(st.integers(0, 4), min_size=4, max_size=4),
    st.lists(st.integers(0, 4), min_size=4, max_size=4),
    st.integers(1, 8),
    st.integers(0, 8),
    st.integers(0, 3),
)
def test_an_allocation_takes_exactly_the_order_and_never_more_than_a_location_has(a, b, qa, qb, buffer):
    channel = Channel(channel_id="web", name="Web", locations=WEB.locations, buffer=buffer)
    positions = stock(**{loc: {"a": a[i], "b": b[i]} for i, loc in enumerate(WEB.locations)})
    wanted = lines(a=qa, **({"b": qb} if qb else {}))
    try:
        got = source(wanted, channel, positions, PLACES)
    except InsufficientStock:
        assert qa > max(0, sum(a) - buffer) or qb > max(0, sum(b) - buffer)
        return
    for sku, qty in (("a", qa), ("b", qb)):
        assert sum(line.qty for al in got for line in al.lines if line.sku == sku) == qty
    for al in got:
        assert al.lines  # no empty allocation
        for line in al.lines:
            assert line.qty <= positions[(al.location_id, line.sku)].available
    single = [
        loc
        for loc in WEB.locations
        if a[WEB.locations.index(loc)] >= qa and b[WEB.locations.index(loc)] >= qb
    ]
    if single:
        assert [al.location_id for al in got] == [single[0]]
