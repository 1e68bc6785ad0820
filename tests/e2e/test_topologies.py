"""The ledger's main path end to end, in both shapes the service runs in (the ``served`` fixture: one process,
and compose.yaml's topology as local processes): a till's sale over NATS and a web reservation over HTTP reach
the ledger, the out stream and the bucket, and a reservation for more than is left is refused with a shortage."""

from __future__ import annotations

import json
import time

from tests.support_live import Served, sell_over_nats, served, unique
from tests.support_service import kv_at_version

__all__ = ["served"]


async def test_a_till_sale_over_nats_and_a_web_reservation_reach_the_ledger_the_out_stream_and_the_bucket(
    served: Served,
) -> None:
    store, sku = served.store(), unique("SKU-E2E")
    nc = await served.nats()
    try:
        published = await nc.subscribe(f"stocksync.out.availability.{store}.{sku}")
        served.post_event("receipt", store, [{"sku": sku, "qty": 5}])
        await sell_over_nats(served, served.key("pos", store), store, sku, 2)
        sold = await _until(published, lambda body: body["on_hand"] == 3)
        web = {"Authorization": f"Bearer {served.key('ecommerce')}"}
        held = served.admin.post(
            "/v1/reservations",
            headers=web,
            json={"location_id": store, "channel": "ecommerce", "lines": [{"sku": sku, "qty": 3}]},
        )
        too_many = served.admin.post(
            "/v1/reservations",
            headers=web,
            json={"location_id": store, "channel": "ecommerce", "lines": [{"sku": sku, "qty": 1}]},
        )
        reserved = await _until(published, lambda body: body["reserved"] == 3)
        kv = await nc.jetstream().key_value("stocksync_availability")
        entry = await kv_at_version(kv, f"{store}.{sku}", reserved["version"], seconds=30)
    finally:
        await nc.close()
    assert (sold["on_hand"], sold["available"]) == (3, 3)
    assert held.status_code == 201 and held.json()["status"] == "held", held.text
    assert too_many.status_code == 409 and too_many.json()["error"] == "insufficient_stock"
    assert too_many.json()["shortages"] == [{"sku": sku, "requested": 1, "available": 0}]
    assert (reserved["on_hand"], reserved["reserved"], reserved["available"]) == (3, 3, 0)
    assert (entry["on_hand"], entry["reserved"], entry["available"]) == (3, 3, 0)
    assert served.position(store, sku)["version"] == reserved["version"] == entry["version"]


async def _until(published, wanted, seconds: float = 30) -> dict:
    """The first availability message ``wanted`` accepts (an earlier version may come first, or be conflated)."""
    deadline = time.monotonic() + seconds
    while not wanted(body := json.loads((await published.next_msg(deadline - time.monotonic())).data)):
        pass
    return body
