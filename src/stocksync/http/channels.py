"""Channels (spec section 7): defined by admin keys, read by any key, with what each may sell per sku."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.channels import ChannelReader, put_channel
from stocksync.domain.channels import channel_stock
from stocksync.domain.errors import UnknownChannel
from stocksync.domain.events import MAX_LINES, Sku, decoder
from stocksync.http.auth import admin_only
from stocksync.http.errors import documented
from stocksync.http.schemas import (
    ChannelAvailabilityList,
    ChannelBody,
    ChannelIdPath,
    ChannelList,
    ChannelRequest,
    body_operation,
    read_body,
)
from stocksync.messages import channel_availability_body

_decode_channel = decoder(ChannelRequest)
Skus = Annotated[list[Sku], QueryParameter(min_items=1, max_items=MAX_LINES, description="repeatable")]


class ChannelController(Controller):
    path = "/channels"
    tags = ["channels"]

    @get("/", responses=documented())
    async def list_all(self, channels: NamedDependency[ChannelReader]) -> ChannelList:
        return ChannelList(items=[ChannelBody.of(channel) for channel in await channels.channels()])

    @put(
        "/{channel_id:str}",
        guards=[admin_only],
        operation_class=body_operation(ChannelRequest),
        responses=documented(400, 403, 404, 413),
    )
    async def define(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[AsyncEngine],
        channel_id: ChannelIdPath,
    ) -> ChannelBody:
        """Create or replace a channel: its locations in priority order and its buffer (404 for a location
        that is not known). Its availability is published again for every sku of the old and new locations."""
        channel = (await read_body(request, _decode_channel)).channel(channel_id)
        await put_channel(engine, channel)
        return ChannelBody.of(channel)

    @get("/{channel_id:str}", responses=documented(400, 404))
    async def read(self, channels: NamedDependency[ChannelReader], channel_id: ChannelIdPath) -> ChannelBody:
        found = await channels.channels([channel_id])
        if not found:
            raise UnknownChannel(f"channel {channel_id!r} is not known")
        return ChannelBody.of(found[0])

    @get("/{channel_id:str}/availability", responses=documented(400, 404))
    async def availability(
        self, channels: NamedDependency[ChannelReader], channel_id: ChannelIdPath, sku: Skus
    ) -> ChannelAvailabilityList:
        """``available = max(0, Σ available at its locations − buffer)`` per sku, in the order asked."""
        channel, positions = await channels.stock(channel_id, sku)
        return ChannelAvailabilityList(
            items=[
                channel_availability_body(channel_stock(channel, s, positions)) for s in dict.fromkeys(sku)
            ]
        )
