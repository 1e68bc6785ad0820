"""Locations and their safety-stock buffers: reference data, changed by admin keys only."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.locations import list_locations, upsert_locations
from stocksync.clock import Clock
from stocksync.domain.events import SetSafetyStock, decoder
from stocksync.domain.model import Location
from stocksync.http.auth import Access, admin_only
from stocksync.http.errors import documented, refusal
from stocksync.http.schemas import (
    LocationIdPath,
    LocationList,
    LocationRequest,
    SafetyStockRequest,
    SkuPath,
    body_operation,
    read_body,
)
from stocksync.messages import PositionBody, position_body
from stocksync.service.ledger_service import LedgerService

_decode_location = decoder(LocationRequest)
_decode_safety_stock = decoder(SafetyStockRequest)


class LocationController(Controller):
    path = "/locations"
    tags = ["locations"]

    @get("/")
    async def list_all(self, engine: NamedDependency[AsyncEngine]) -> LocationList:
        return LocationList(items=await list_locations(engine))

    @put(
        "/{location_id:str}",
        guards=[admin_only],
        operation_class=body_operation(LocationRequest),
        responses=documented(403),
    )
    async def upsert(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[AsyncEngine],
        access: NamedDependency[Access],
        location_id: LocationIdPath,
    ) -> Location:
        """Create or replace a location (not a ledger change: no movement)."""
        location = (await read_body(request, _decode_location)).location(location_id)
        await upsert_locations(engine, [location])
        access.forget(location_id)
        return location

    @put(
        "/{location_id:str}/safety-stock/{sku:str}",
        guards=[admin_only],
        operation_class=body_operation(SafetyStockRequest),
        responses=documented(403, 404),
    )
    async def safety_stock(
        self,
        request: Request[Any, Any, Any],
        ledger: NamedDependency[LedgerService],
        clock: NamedDependency[Clock],
        location_id: LocationIdPath,
        sku: SkuPath,
    ) -> PositionBody:
        """Set the buffer kept out of ``available``: a change, so version + 1 and a zero-delta movement."""
        qty = (await read_body(request, _decode_safety_stock)).qty
        event = SetSafetyStock(
            event_id=f"safety-stock:{uuid4().hex}",
            location_id=location_id,
            occurred_at=clock(),
            sku=sku,
            qty=qty,
        )
        result = await ledger.apply([event])
        if result.outcomes[0].outcome == "rejected":
            raise refusal(result.outcomes[0])
        return position_body(result.positions[(location_id, sku)])
