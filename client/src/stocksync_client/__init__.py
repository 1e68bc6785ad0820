"""Client libraries a retailer's own code uses: `PosClient` for tills, `EcommerceClient` for the web shop
(docs/integration.md). The bodies they send and receive are `stocksync_contract`'s."""

from __future__ import annotations

from stocksync_client.ecommerce import (
    ApiError,
    EcommerceClient,
    EcommerceHttp,
    OrderTimeout,
    ReservationTimeout,
)
from stocksync_client.pos import PosClient
from stocksync_client.spool import RejectedEvent, SpoolInUse

__all__ = [
    "ApiError",
    "EcommerceClient",
    "EcommerceHttp",
    "OrderTimeout",
    "PosClient",
    "RejectedEvent",
    "ReservationTimeout",
    "SpoolInUse",
]
