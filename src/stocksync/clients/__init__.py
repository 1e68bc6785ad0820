"""Client libraries a retailer's own code uses: `PosClient` for tills, `EcommerceClient` for the web shop."""

from __future__ import annotations

from stocksync.clients.ecommerce import ApiError, EcommerceClient, ReservationTimeout
from stocksync.clients.pos import PosClient
from stocksync.clients.spool import RejectedEvent, SpoolInUse

__all__ = ["ApiError", "EcommerceClient", "PosClient", "RejectedEvent", "ReservationTimeout", "SpoolInUse"]
