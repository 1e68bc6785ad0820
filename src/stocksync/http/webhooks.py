"""Webhooks (issue 12): out-stream messages delivered by HTTP, for systems that cannot consume NATS. Admin only:
a webhook sees every message it names, whatever store it is of."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.webhooks import delete_webhook, deliveries, put_webhook, webhooks
from stocksync.domain.errors import NotFound
from stocksync.domain.events import decoder
from stocksync.http.auth import admin_only
from stocksync.http.errors import documented
from stocksync.http.schemas import (
    DeliveryList,
    WebhookBody,
    WebhookIdPath,
    WebhookList,
    WebhookRequest,
    body_operation,
    read_body,
)

_decode_webhook = decoder(WebhookRequest)


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @get("/", guards=[admin_only], responses=documented(403))
    async def list_all(self, engine: NamedDependency[AsyncEngine]) -> WebhookList:
        return WebhookList(items=[WebhookBody.of(hook) for hook in await webhooks(engine)])

    @put(
        "/{webhook_id:str}",
        guards=[admin_only],
        operation_class=body_operation(WebhookRequest),
        responses=documented(400, 403, 413),
    )
    async def define(
        self, request: Request[Any, Any, Any], engine: NamedDependency[AsyncEngine], webhook_id: WebhookIdPath
    ) -> WebhookBody:
        """Create or replace: the URL, the out-stream subjects wanted (NATS wildcards allowed) and the secret
        deliveries are signed with. Deliveries start with the messages published from now on."""
        hook = (await read_body(request, _decode_webhook)).webhook(webhook_id)
        await put_webhook(engine, hook)
        return WebhookBody.of(hook)

    @delete("/{webhook_id:str}", guards=[admin_only], status_code=204, responses=documented(400, 403, 404))
    async def remove(self, engine: NamedDependency[AsyncEngine], webhook_id: WebhookIdPath) -> None:
        if not await delete_webhook(engine, webhook_id):
            raise NotFound(f"webhook {webhook_id!r} is not known")

    @get("/{webhook_id:str}/deliveries", guards=[admin_only], responses=documented(400, 403, 404))
    async def log(
        self,
        engine: NamedDependency[AsyncEngine],
        webhook_id: WebhookIdPath,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> DeliveryList:
        """The newest first: each message delivered (a 2xx) or given up, with its attempts."""
        if not await webhooks(engine, webhook_id):
            raise NotFound(f"webhook {webhook_id!r} is not known")
        return DeliveryList(items=await deliveries(engine, webhook_id, limit))
