"""Outbox rows are built from what a batch changed, with no I/O: one availability row per changed position at
its final version (the bucket's key and version beside it), a reservation row per reservation event, and an
outcome row per inbound event; every message id names the location (rule 10)."""

from __future__ import annotations

import msgspec

from stocksync.service.outbox import outbox_rows
from tests.support_ledger import apply, new_ledger, receipt, reserve, sale

STORE, SKU = "store-1", "SKU-1"


def test_a_batch_publishes_each_position_once_at_its_final_version() -> None:
    ledger = new_ledger(STORE)
    events = [receipt(STORE, {SKU: 5}), sale(STORE, {SKU: 2}), reserve(STORE, {SKU: 1}, reservation_id="res-1")]
    apply(ledger, *events)
    rows = outbox_rows(ledger.changes({}))

    availability = [r for r in rows if r["kv_key"] is not None]
    assert [(r["subject"], r["kv_key"], r["version"]) for r in availability] == [
        (f"stocksync.out.availability.{STORE}.{SKU}", f"{STORE}.{SKU}", 3)
    ]
    body = msgspec.json.decode(availability[0]["payload"])
    assert (body["on_hand"], body["reserved"], body["available"], body["version"]) == (3, 1, 2, 3)
    assert availability[0]["msg_id"] == f"availability:{STORE}:{SKU}:3"

    outcomes = [r for r in rows if r["subject"] == f"stocksync.out.outcome.{STORE}"]
    assert [r["msg_id"] for r in outcomes] == [f"outcome:{STORE}:{e.event_id}:applied" for e in events]
    (held,) = [r for r in rows if r["subject"] == "stocksync.out.reservation.res-1"]
    assert msgspec.json.decode(held["payload"])["status"] == "held"
    assert held["msg_id"] == f"reservation:{STORE}:{events[2].event_id}:applied"


def test_a_reserve_refused_for_want_of_stock_is_published_rejected_with_its_shortages() -> None:
    ledger = new_ledger(STORE)
    refused = reserve(STORE, {SKU: 4}, reservation_id="res-2")
    apply(ledger, refused)
    (row,) = [r for r in outbox_rows(ledger.changes({})) if "reservation" in r["subject"]]
    body = msgspec.json.decode(row["payload"])
    assert body["status"] == "rejected"
    assert body["shortages"] == [{"sku": SKU, "requested": 4, "available": 0}]
