"""Online orders over NATS: ``stocksync.in._order.<channel_id>.<place|ship|cancel>``, the same service as
``/v1/orders``. Each order is one transaction of its own (it locks a whole channel's positions for its skus).

What became of an order is published on ``stocksync.out.order.<order_id>``: by the outbox, in the order's own
transaction, when it changed (placed, refused for want of stock, shipped, cancelled); directly, when a refusal
changed nothing (an unknown channel or order, an id placed with other lines, an order no longer allocated).
A message that is not a valid order goes to the DLQ like any other; a passing fault leaves it unacknowledged.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from stocksync.clock import utc_now
from stocksync.domain.errors import StocksyncError, Unavailable
from stocksync.domain.events import OrderAction, OrderRequest, decoder
from stocksync.domain.ledger import merge_lines
from stocksync.domain.model import ReservationLine
from stocksync.domain.orders import Order
from stocksync.messages import order_body
from stocksync.messaging.refusals import Refused, decoded
from stocksync.service.orders import OrderService
from stocksync.wire import MSG_ID, ORDER_ACTIONS, order_inbound_parts, order_inbound_subject, order_subject

log = structlog.get_logger("stocksync.orders")
_decode_place, _decode_action = decoder(OrderRequest), decoder(OrderAction)
_encode = msgspec.json.encode


def decode_order(subject: str, data: bytes) -> tuple[str, OrderRequest | OrderAction]:
    """(action, body) of an order message; `Refused` with the dead letter's code otherwise."""
    parts = order_inbound_parts(subject)
    if parts is None or parts[1] not in ORDER_ACTIONS:
        raise Refused("subject_mismatch", f"{subject!r} is not stocksync.in._order.<channel_id>.<action>")
    channel_id, action = parts
    body = decoded(_decode_place if action == "place" else _decode_action, data, "invalid_order")
    if isinstance(body, OrderRequest) and body.channel_id != channel_id:
        wanted = order_inbound_subject(body.channel_id, action)
        raise Refused("subject_mismatch", f"subject {subject!r} does not match the body ({wanted})")
    return action, body


class OrderHandler:
    def __init__(self, js: JetStreamContext, orders: OrderService) -> None:
        self.js = js
        self.orders = orders

    async def handle(self, msg: Msg, action: str, body: OrderRequest | OrderAction) -> None:
        """Apply one order message; raises `Unavailable` (a passing fault) without acknowledging it."""
        try:
            if isinstance(body, OrderRequest):
                await self.orders.place(body, source_name="nats")
            elif action == "ship":
                await self.orders.ship(body.order_id)
            else:
                await self.orders.cancel(body.order_id)
        except Unavailable:
            raise
        except StocksyncError as refusal:
            await self._refused(body, refusal)
        await msg.ack()

    async def _refused(self, body: OrderRequest | OrderAction, refusal: StocksyncError) -> None:
        """A refusal the outbox did not publish (it recorded nothing): the order as it is, or as asked."""
        if refusal.code == "insufficient_stock":
            return  # recorded with the order, and published by the outbox in that transaction
        try:
            order = await self.orders.read(body.order_id)
        except StocksyncError:
            order = _as_asked(body)
        message = order_body(order, error=refusal.code)
        msg_id = f"order:{body.order_id}:refused:{refusal.code}:{order.status}"
        await self.js.publish(order_subject(body.order_id), _encode(message), headers={MSG_ID: msg_id})
        log.info("order_refused", order_id=body.order_id, error=refusal.code)


def _as_asked(body: OrderRequest | OrderAction) -> Order:
    now = utc_now()
    lines = merge_lines(ReservationLine(sku=x.sku, qty=x.qty) for x in getattr(body, "lines", ()))
    return Order(
        order_id=body.order_id,
        channel_id=getattr(body, "channel_id", ""),
        status="rejected",
        lines=lines,
        allocations=(),
        created_at=now,
        expires_at=now + timedelta(seconds=getattr(body, "ttl_seconds", 0)),
        reference=getattr(body, "reference", None),
    )
