"""Online orders (spec section 7): placed whole or not at all, read, shipped and cancelled."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler
from litestar.openapi import ResponseSpec

from stocksync.domain.errors import Forbidden
from stocksync.domain.events import OrderRequest, decoder
from stocksync.http.errors import documented
from stocksync.http.schemas import OrderIdPath, body_operation, read_body
from stocksync.messages import OrderBody, order_body
from stocksync.service.keys import ApiKey
from stocksync.service.orders import OrderService

_decode_order = decoder(OrderRequest)
ORDERING_ROLES = frozenset({"admin", "ecommerce"})


def may_order(connection: ASGIConnection[Any, ApiKey, Any, Any], _: BaseRouteHandler) -> None:
    """The web shop orders on any channel (and an admin); a till or a store's staff does not."""
    if connection.user.role not in ORDERING_ROLES:
        raise Forbidden(f"a {connection.user.role} key may not place, ship or cancel online orders")


class OrderController(Controller):
    path = "/orders"
    tags = ["orders"]

    @post(
        "/",
        guards=[may_order],
        operation_class=body_operation(OrderRequest),
        responses={
            200: ResponseSpec(OrderBody, description="the same order id again: the order as first placed"),
            **documented(400, 403, 404, 409, 413, shortages=True),
        },
    )
    async def place(
        self,
        request: Request[ApiKey, Any, Any],
        key: NamedDependency[ApiKey],
        orders: NamedDependency[OrderService],
    ) -> Response[OrderBody]:
        """Allocate every line or none (201): one location holding the whole order (nearest to ``ship_to``,
        else the first by priority), else the fewest; 409 insufficient_stock with channel-level shortages;
        409 order_id_conflict for the same id with other lines; 404 unknown_channel."""
        body = await read_body(request, _decode_order)
        order, placed = await orders.place(body, source_name=f"http:{key.key_id}")
        return Response(order_body(order), status_code=201 if placed else 200)

    @get("/{order_id:str}", responses=documented(400, 404))
    async def read(self, orders: NamedDependency[OrderService], order_id: OrderIdPath) -> OrderBody:
        return order_body(await orders.read(order_id))

    @post(
        "/{order_id:str}/ship", guards=[may_order], status_code=200, responses=documented(400, 403, 404, 409)
    )
    async def ship(self, orders: NamedDependency[OrderService], order_id: OrderIdPath) -> OrderBody:
        """Every allocation collected (a sale at its location); shipping again answers the same; 409
        order_not_allocated with the order's status otherwise."""
        return order_body(await orders.ship(order_id))

    @post(
        "/{order_id:str}/cancel",
        guards=[may_order],
        status_code=200,
        responses=documented(400, 403, 404, 409),
    )
    async def cancel(self, orders: NamedDependency[OrderService], order_id: OrderIdPath) -> OrderBody:
        """Every allocation released; cancelling again answers the same; 409 order_not_allocated otherwise."""
        return order_body(await orders.cancel(order_id))
