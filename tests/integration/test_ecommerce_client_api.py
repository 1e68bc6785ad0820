"""Every HTTP and NATS call of `EcommerceClient` against the running service (`stocksync serve`, every
role): the typed bodies it answers, and the ledger's numbers after each (read back over HTTP as an admin)."""

from __future__ import annotations

import uuid

import pytest

from stocksync_client import ApiError, EcommerceClient
from stocksync_contract.events import OrderRequest, QtyLine, ShipTo
from stocksync_contract.messages import (
    ChannelAvailabilityBody,
    LocationAvailable,
    OrderBody,
    OutcomeMessage,
    PickupStore,
    PositionBody,
    ReservationBody,
    ReservationLine,
    Shortage,
)
from tests.support_live import Served, served, unique

__all__ = ["served"]  # the fixture, imported for pytest
pytestmark = pytest.mark.parametrize("served", ["process"], indirect=True)


def stocked(served: Served, qty: int) -> tuple[str, str, str]:
    """A pickup store holding ``qty`` of a new sku, and a channel selling from it: (store, sku, channel)."""
    store, sku, channel = served.store(lat=52.37, lon=4.89), unique("SKU"), unique("web")
    served.post_event("receipt", store, [{"sku": sku, "qty": qty}])
    answer = served.admin.put(f"/v1/channels/{channel}", json={"name": "Web", "locations": [store]})
    assert answer.status_code == 200, answer.text
    return store, sku, channel


def ledger(served: Served, store: str, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of the position, as the ledger has it."""
    position = served.position(store, sku)
    return position["on_hand"], position["reserved"]


async def shop(served: Served) -> EcommerceClient:
    return await EcommerceClient.open(served.nats_url, api_url=served.base, api_key=served.key("ecommerce"))


async def test_stock_and_pickup_over_http_are_typed_bodies(served: Served) -> None:
    store, sku, channel = stocked(served, 5)
    async with await shop(served) as client:
        [position] = await client.http.availability([sku], [store])
        [sellable] = await client.http.channel_availability(channel, [sku])
        stores = await client.http.pickup([QtyLine(sku=sku, qty=5)], near=(52.37, 4.89), limit=100)
        too_many = await client.http.pickup([QtyLine(sku=sku, qty=6)], limit=100)

    assert isinstance(position, PositionBody)
    assert (position.on_hand, position.reserved, position.available) == (5, 0, 5)
    assert sellable == ChannelAvailabilityBody(
        channel_id=channel,
        sku=sku,
        available=5,
        locations=(LocationAvailable(location_id=store, available=5),),
    )
    [here] = [s for s in stores if s.location_id == store]
    assert isinstance(here, PickupStore) and here.lines[0].available == 5 and here.distance_km == 0
    assert store not in {s.location_id for s in too_many}


async def test_reservations_over_http_hold_collect_cancel_and_a_shortage_is_an_api_error(
    served: Served,
) -> None:
    store, sku, _ = stocked(served, 5)
    async with await shop(served) as client:
        held = await client.http.reserve(store, [QtyLine(sku=sku, qty=3)], ttl_seconds=600, reference="o-1")
        assert isinstance(held, ReservationBody)
        assert (held.status, held.lines, held.reference) == (
            "held",
            (ReservationLine(sku=sku, qty=3),),
            "o-1",
        )
        assert ledger(served, store, sku) == (5, 3)

        with pytest.raises(ApiError) as short:
            await client.http.reserve(store, [QtyLine(sku=sku, qty=3)])
        assert (short.value.status, short.value.error) == (409, "insufficient_stock")
        assert short.value.shortages == (Shortage(sku=sku, requested=3, available=2),)
        assert ledger(served, store, sku) == (5, 3)

        assert await client.http.reservation(held.reservation_id, store) == held
        collected = await client.http.collect(held.reservation_id, store)
        assert collected.status == "collected"
        assert ledger(served, store, sku) == (2, 0)

        other = await client.http.reserve(store, [QtyLine(sku=sku, qty=2)])
        assert ledger(served, store, sku) == (2, 2)
        assert (await client.http.cancel(other.reservation_id)).status == "cancelled"
        assert ledger(served, store, sku) == (2, 0)

        with pytest.raises(ApiError) as not_held:
            await client.http.collect(other.reservation_id, store)
        assert (not_held.value.status, not_held.value.error) == (409, "reservation_not_held")
        with pytest.raises(ApiError) as invalid:
            await client.http.reserve(store, [QtyLine(sku=sku, qty=0)])
        assert (invalid.value.status, invalid.value.error, invalid.value.field) == (
            400,
            "invalid_request",
            "lines[0].qty",
        )


async def test_event_outcomes_are_looked_up_over_http(served: Served) -> None:
    store, sku, _ = stocked(served, 2)
    async with await shop(served) as client:
        held = await client.http.reserve(store, [QtyLine(sku=sku, qty=1)])
        outcome = await client.http.event(f"http:reserve:{held.reservation_id}", store)
        with pytest.raises(ApiError) as missing:
            await client.http.event(f"never:{uuid.uuid4().hex}?#%")
    assert isinstance(outcome, OutcomeMessage)
    assert (outcome.type, outcome.outcome, outcome.error) == ("reserve", "applied", None)
    assert (missing.value.status, missing.value.error) == (404, "not_found")


async def test_orders_over_http_are_placed_read_shipped_and_cancelled(served: Served) -> None:
    store, sku, channel = stocked(served, 4)
    order = OrderRequest(
        order_id=unique("web"),
        channel_id=channel,
        lines=[QtyLine(sku=sku, qty=3)],
        ship_to=ShipTo(lat=52, lon=4),
    )
    async with await shop(served) as client:
        placed = await client.http.place_order(order)
        assert isinstance(placed, OrderBody) and placed.status == "allocated"
        assert [a.location_id for a in placed.allocations] == [store]
        assert ledger(served, store, sku) == (4, 3)
        assert await client.http.order(order.order_id) == placed

        with pytest.raises(ApiError) as short:
            await client.http.place_order(
                OrderRequest(order_id=unique("web"), channel_id=channel, lines=order.lines)
            )
        assert (short.value.status, short.value.error) == (409, "insufficient_stock")
        assert short.value.shortages == (Shortage(sku=sku, requested=3, available=1),)

        assert (await client.http.ship_order(order.order_id)).status == "shipped"
        assert ledger(served, store, sku) == (1, 0)

        second = OrderRequest(order_id=unique("web"), channel_id=channel, lines=[QtyLine(sku=sku, qty=1)])
        assert (await client.http.place_order(second)).status == "allocated"
        assert ledger(served, store, sku) == (1, 1)
        assert (await client.http.cancel_order(second.order_id)).status == "cancelled"
        assert ledger(served, store, sku) == (1, 0)


async def test_reservations_over_nats_answer_with_the_ledger_moved(served: Served) -> None:
    store, sku, _ = stocked(served, 3)
    async with await shop(served) as client:
        held = await client.reserve(store, [QtyLine(sku=sku, qty=2)])
        assert (held.status, held.lines) == ("held", (ReservationLine(sku=sku, qty=2),))
        assert ledger(served, store, sku) == (3, 2)
        short = await client.reserve(store, [QtyLine(sku=sku, qty=2)])
        assert (short.status, short.shortages) == ("rejected", (Shortage(sku=sku, requested=2, available=1),))
        assert (await client.collect(held.reservation_id, store)).status == "collected"
        assert ledger(served, store, sku) == (1, 0)
        other = await client.reserve(store, [QtyLine(sku=sku, qty=1)])
        assert (await client.cancel(other.reservation_id, store)).status == "cancelled"
        assert ledger(served, store, sku) == (1, 0)
        looked_up = await client.http.event(held.event_id, store)
        assert looked_up.outcome == "applied"


async def test_orders_over_nats_are_placed_shipped_cancelled_and_refusals_carry_the_error(
    served: Served,
) -> None:
    store, sku, channel = stocked(served, 3)
    async with await shop(served) as client:
        order = OrderRequest(order_id=unique("web"), channel_id=channel, lines=[QtyLine(sku=sku, qty=2)])
        placed = await client.place_order(order)
        assert (placed.status, placed.error) == ("allocated", None)
        assert ledger(served, store, sku) == (3, 2)

        short = await client.place_order(
            OrderRequest(order_id=unique("web"), channel_id=channel, lines=order.lines)
        )
        assert (short.status, short.error) == ("rejected", "insufficient_stock")
        assert short.shortages == (Shortage(sku=sku, requested=2, available=1),)

        assert (await client.ship_order(channel, order.order_id)).status == "shipped"
        assert ledger(served, store, sku) == (1, 0)
        again = await client.cancel_order(channel, order.order_id)
        assert (again.status, again.error) == ("shipped", "order_not_allocated")

        second = OrderRequest(order_id=unique("web"), channel_id=channel, lines=[QtyLine(sku=sku, qty=1)])
        assert (await client.place_order(second)).status == "allocated"
        assert (await client.cancel_order(channel, second.order_id)).status == "cancelled"
        assert ledger(served, store, sku) == (1, 0)
