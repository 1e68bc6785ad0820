"""Reading stock: positions, pickup stores for a basket, and the audit trail."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from stocksync.adapters.queries import MOVEMENT_CURSOR, MovementCursor, Queries
from stocksync.domain.errors import InvalidRequest
from stocksync.domain.events import MAX_LINES, LocationId, Qty, Sku
from stocksync.domain.pickup import pickup_stores
from stocksync.http.errors import documented
from stocksync.http.schemas import (
    LocationIdQuery,
    MovementPage,
    PickupAnswer,
    PositionList,
    SkuQuery,
    parse_near,
    pickup_lines,
)
from stocksync.messages import position_body

# Every list a request names or an answer holds is bounded (docs/operations.md, "Request bounds").
MAX_LOCATIONS = 100  # location_id values in one availability request
MAX_POSITIONS = 10_000  # positions in one availability answer: locations x skus, or where the skus are held

Skus = Annotated[list[Sku], QueryParameter(min_items=1, max_items=MAX_LINES, description="repeatable")]
Locations = Annotated[
    list[LocationId] | None,
    QueryParameter(max_items=MAX_LOCATIONS, description=f"repeatable, at most {MAX_LOCATIONS}"),
]


class StockController(Controller):
    path = "/"
    tags = ["stock"]

    @get("/availability", responses=documented(404))
    async def availability(
        self,
        queries: NamedDependency[Queries],
        sku: Skus,
        location_id: Locations = None,
    ) -> PositionList:
        """The skus at the locations (zeros where never seen); without locations, wherever they are held.

        At most 10,000 positions: locations x skus, or the positions that hold the skus (else 400)."""
        pairs = len(set(location_id or ())) * len(set(sku))
        if pairs > MAX_POSITIONS:
            detail = f"{pairs} positions asked for (locations x skus); at most {MAX_POSITIONS}"
            raise InvalidRequest(detail, field="location_id")
        positions = await queries.positions(sku, location_id or (), limit=MAX_POSITIONS + 1)
        if len(positions) > MAX_POSITIONS:
            raise InvalidRequest(
                f"these skus are held at more than {MAX_POSITIONS} positions: name the locations",
                field="location_id",
            )
        return PositionList(items=[position_body(position) for position in positions])

    @get("/pickup")
    async def pickup(
        self,
        queries: NamedDependency[Queries],
        sku: Skus,
        qty: Annotated[
            list[Qty] | None, QueryParameter(max_items=MAX_LINES, description="paired with sku; else 1")
        ] = None,
        near: Annotated[str | None, QueryParameter(description="lat,lon in degrees")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
    ) -> PickupAnswer:
        """Pickup-enabled stores that can hold every line now, nearest first when ``near`` is given."""
        wanted = pickup_lines(sku, qty)
        origin = parse_near(near)
        stores, positions = await queries.pickup_stock([line.sku for line in wanted])
        return PickupAnswer(stores=pickup_stores(stores, positions, wanted, near=origin, limit=limit))

    @get("/movements")
    async def movements(
        self,
        queries: NamedDependency[Queries],
        location_id: LocationIdQuery = None,
        sku: SkuQuery = None,
        after: Annotated[
            str,
            QueryParameter(
                pattern=MOVEMENT_CURSOR.pattern,
                description="the `next` of the previous page, or a movement `id` (0: from the start)",
            ),
        ] = "0",
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> MovementPage:
        """The audit trail oldest first, keyset-paged by an opaque cursor that never skips a movement.

        Movements show once their transaction and every older one have finished, in (transaction, id) order:
        a page never passes a movement that commits later.
        """
        cursor = MovementCursor.parse(after)
        items, following = await queries.movements(location_id=location_id, sku=sku, after=cursor, limit=limit)
        return MovementPage(items=items, next=following.encode() if following else None)
