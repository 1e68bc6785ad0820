"""Reading stock: positions, pickup stores for a basket, and the audit trail."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from stocksync.domain.events import MAX_LINES, LocationId, Qty, Sku
from stocksync.domain.pickup import pickup_stores
from stocksync.http.errors import documented
from stocksync.http.schemas import (
    BIGINT_MAX,
    LocationIdQuery,
    MovementPage,
    PickupAnswer,
    PositionList,
    SkuQuery,
    parse_near,
    pickup_lines,
)
from stocksync.messages import PositionBody
from stocksync.service.queries import Queries

Skus = Annotated[list[Sku], QueryParameter(min_items=1, max_items=MAX_LINES, description="repeatable")]


class StockController(Controller):
    path = "/"
    tags = ["stock"]

    @get("/availability", responses=documented(400, 404))
    async def availability(
        self,
        queries: NamedDependency[Queries],
        sku: Skus,
        location_id: FromQuery[list[LocationId] | None] = None,
    ) -> PositionList:
        """The skus at the locations (zeros where never seen); without locations, wherever they are held."""
        positions = await queries.positions(sku, location_id or ())
        return PositionList(items=[PositionBody.of(position) for position in positions])

    @get("/pickup", responses=documented(400))
    async def pickup(
        self,
        queries: NamedDependency[Queries],
        sku: Skus,
        qty: Annotated[list[Qty] | None, QueryParameter(description="paired with sku; else 1")] = None,
        near: Annotated[str | None, QueryParameter(description="lat,lon in degrees")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
    ) -> PickupAnswer:
        """Pickup-enabled stores that can hold every line now, nearest first when ``near`` is given."""
        wanted = pickup_lines(sku, qty)
        origin = parse_near(near)
        stores, positions = await queries.pickup_stock([line.sku for line in wanted])
        return PickupAnswer(stores=pickup_stores(stores, positions, wanted, near=origin, limit=limit))

    @get("/movements", responses=documented(400))
    async def movements(
        self,
        queries: NamedDependency[Queries],
        location_id: LocationIdQuery = None,
        sku: SkuQuery = None,
        after: Annotated[
            int, QueryParameter(ge=0, le=BIGINT_MAX, description="the `next` of the previous page")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> MovementPage:
        """The audit trail oldest first, keyset-paged by movement id."""
        items, following = await queries.movements(location_id=location_id, sku=sku, after=after, limit=limit)
        return MovementPage(items=items, next=following)
