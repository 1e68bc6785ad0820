"""`stocksync demo`: a small retailer to try stocksync on — a warehouse, an online node, pickup stores in
Amsterdam, a few hundred skus with stock, and the ``web`` channel the web shop sells from (the warehouse,
the online node and three stores that ship from store). Safe to repeat: its receipts have fixed event ids."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.channels import put_channel
from stocksync.adapters.locations import upsert_locations
from stocksync.domain.channels import Channel
from stocksync.domain.events import QtyLine, Receipt
from stocksync.domain.model import Location
from stocksync.service.ledger_service import LedgerService

STORES = (
    ("store-ams-centraal", "Amsterdam Centraal", 52.3791, 4.9003),
    ("store-ams-dam", "Amsterdam Dam Square", 52.3731, 4.8926),
    ("store-ams-zuid", "Amsterdam Zuid", 52.3389, 4.8730),
    ("store-ams-oost", "Amsterdam Oost", 52.3603, 4.9380),
    ("store-ams-noord", "Amsterdam Noord", 52.3996, 4.9191),
    ("store-ams-west", "Amsterdam West", 52.3700, 4.8400),
)
LOCATIONS = (
    Location(
        location_id="wh-ams", kind="warehouse", name="Amsterdam Distribution Centre", lat=52.3008, lon=4.7631
    ),
    Location(location_id="online-eu", kind="online", name="Web fulfilment EU"),
    *(
        Location(location_id=lid, kind="store", name=name, pickup_enabled=True, lat=lat, lon=lon)
        for lid, name, lat, lon in STORES
    ),
)
WEB = Channel(
    channel_id="web",
    name="Web shop",
    locations=("wh-ams", "online-eu", "store-ams-centraal", "store-ams-zuid", "store-ams-noord"),
    buffer=2,  # kept back from what the web shop is shown, against a count that is off
)
CATEGORIES = ("TSHIRT", "JEANS", "SNEAKER", "JACKET", "SOCKS", "CAP")
SIZES = ("S", "M", "L", "XL")
STOCKED_AT = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # fixed, so a second run repeats the same events


def demo_skus(n: int = 300) -> list[str]:
    return [
        f"SKU-{CATEGORIES[i % len(CATEGORIES)]}-{i // len(CATEGORIES):03d}-{SIZES[i % 4]}" for i in range(n)
    ]


def demo_receipts(skus: list[str]) -> list[Receipt]:
    """Deep stock in the warehouse, some online, a thin and uneven assortment in each store."""
    rng = random.Random(7)
    receipts = []
    for location in LOCATIONS:
        depth = {"warehouse": (50, 400), "online": (5, 60), "store": (0, 12)}[location.kind]
        lines = [QtyLine(sku=sku, qty=q) for sku in skus if (q := rng.randint(*depth)) > 0]
        for start in range(0, len(lines), 200):
            receipts.append(
                Receipt(
                    event_id=f"demo:receipt:{location.location_id}:{start // 200}",
                    location_id=location.location_id,
                    occurred_at=STOCKED_AT,
                    source="demo",
                    lines=lines[start : start + 200],
                )
            )
    return receipts


async def seed_demo(
    engine: AsyncEngine, ledger: LedgerService, *, progress: Callable[[int], None] = lambda n: None
) -> list[str]:
    skus = demo_skus()
    await upsert_locations(engine, list(LOCATIONS))
    await put_channel(engine, WEB)
    for receipt in demo_receipts(skus):
        await ledger.apply([receipt])
        progress(1)
    return skus
