"""The web shop's client against real NATS and PostgreSQL: reservations answered over NATS, availability
watched in the bucket, pickup stores over HTTP. Each test has location ids of its own on the session's
servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from stocksync.adapters.database import create_engine
from stocksync.clock import utc_now
from stocksync.domain.events import QtyLine, Receipt
from stocksync.domain.model import ReservationLine, Shortage
from stocksync.messaging.topology import migrate_topology
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import LedgerService
from stocksync_client import ApiError, EcommerceClient, PosClient, ReservationTimeout
from tests.integration.test_pos_client import DEADLINE_S, running_service, unique
from tests.support import NatsServer
from tests.support_nats import fetch, wait_until


async def stock(database_url: str, location_id: str, lines: dict[str, int]) -> None:
    """Receive stock straight through the ledger (its outbox still reaches NATS through the relay)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        receipt = Receipt(
            event_id=unique("receipt"),
            location_id=location_id,
            occurred_at=utc_now(),
            source="test",
            lines=[QtyLine(sku=sku, qty=qty) for sku, qty in lines.items()],
        )
        await LedgerService(engine).apply([receipt])
    finally:
        await engine.dispose()


async def on_hand_and_reserved(database_url: str, location_id: str) -> dict[str, tuple[int, int]]:
    rows = await fetch(
        database_url, "SELECT sku, on_hand, reserved FROM positions WHERE location_id = $1", location_id
    )
    return {row["sku"]: (row["on_hand"], row["reserved"]) for row in rows}


async def test_a_reservation_is_held_whole_or_rejected_whole_then_collected_or_cancelled(
    migrated_database_url: str, nats_server: NatsServer
) -> None:
    loc = unique("store")
    async with running_service(migrated_database_url, nats_server.url, [loc]):
        await stock(migrated_database_url, loc, {"SKU-A": 5, "SKU-B": 2})
        async with await EcommerceClient.open(nats_server.url) as shop:
            before = utc_now()
            held = await shop.reserve(
                loc,
                [QtyLine(sku="SKU-A", qty=3), QtyLine(sku="SKU-B", qty=1)],
                ttl_seconds=600,
                reference="order-1",
            )
            short = await shop.reserve(loc, [QtyLine(sku="SKU-A", qty=3), QtyLine(sku="SKU-B", qty=1)])
            other = await shop.reserve(loc, [QtyLine(sku="SKU-B", qty=1)])

            assert (held.status, held.location_id) == ("held", loc)
            assert held.lines == (ReservationLine(sku="SKU-A", qty=3), ReservationLine(sku="SKU-B", qty=1))
            assert held.expires_at is not None
            assert before + timedelta(seconds=600) <= held.expires_at <= utc_now() + timedelta(seconds=600)
            assert short.status == "rejected"
            assert short.shortages == (Shortage(sku="SKU-A", requested=3, available=2),)
            reserved = {"SKU-A": (5, 3), "SKU-B": (2, 2)}
            assert await on_hand_and_reserved(migrated_database_url, loc) == reserved

            assert (await shop.collect(held.reservation_id, loc)).status == "collected"
            assert (await shop.collect(held.reservation_id, loc)).status == "collected"  # again: same answer
            assert (await shop.cancel(other.reservation_id, loc)).status == "cancelled"
            assert (await shop.collect(other.reservation_id, loc)).status == "cancelled"  # it left held once
    assert await on_hand_and_reserved(migrated_database_url, loc) == {"SKU-A": (2, 0), "SKU-B": (1, 0)}


async def test_a_reservation_id_held_at_one_store_is_free_at_another(
    migrated_database_url: str, nats_server: NatsServer
) -> None:
    """A reservation is its location and id: staff holding an id at store A does not refuse the web shop's
    reservation of that id at store B, and each answer is the one for its own store."""
    store_a, store_b, rid = unique("store"), unique("store"), unique("r")
    async with running_service(migrated_database_url, nats_server.url, [store_a, store_b]):
        for store in (store_a, store_b):
            await stock(migrated_database_url, store, {"SKU-A": 5})
        async with await EcommerceClient.open(nats_server.url) as shop:
            line = [QtyLine(sku="SKU-A", qty=1)]
            at_a = await shop.reserve(store_a, line, reservation_id=rid, channel="staff")
            at_b = await shop.reserve(store_b, [QtyLine(sku="SKU-A", qty=2)], reservation_id=rid)
            collected = await shop.collect(rid, store_b)

            assert [(m.location_id, m.status) for m in (at_a, at_b, collected)] == [
                (store_a, "held"),
                (store_b, "held"),
                (store_b, "collected"),
            ]
    assert await on_hand_and_reserved(migrated_database_url, store_a) == {"SKU-A": (5, 1)}
    assert await on_hand_and_reserved(migrated_database_url, store_b) == {"SKU-A": (3, 0)}


async def test_a_reservation_nobody_answers_times_out(nats_server_factory: Callable[[], NatsServer]) -> None:
    server = nats_server_factory()  # no worker: the event stays unapplied in a stream of this test's own
    await migrate_topology(server.url)
    async with await EcommerceClient.open(server.url) as shop:
        with pytest.raises(ReservationTimeout) as raised:
            await shop.reserve("store-1", [QtyLine(sku="SKU-A", qty=1)], reservation_id="r-1", timeout_s=0.5)
    assert raised.value.reservation_id == "r-1"
    assert raised.value.event_id.startswith("ecommerce:reserve:")


async def test_the_watcher_yields_availability_as_it_changes_newer_versions_only(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    loc = unique("store")
    async with running_service(migrated_database_url, nats_server.url, [loc]):
        await stock(migrated_database_url, loc, {"SKU-W": 10, "SKU-X": 1})
        async with (
            await EcommerceClient.open(nats_server.url) as shop,
            await PosClient.open(nats_server.url, loc, "till-1", tmp_path / "spool.sqlite3") as pos,
        ):
            async with aclosing(shop.watch(location_id=loc, sku="SKU-W")) as updates:
                seen = [await asyncio.wait_for(anext(updates), DEADLINE_S)]  # the current value
                for _ in range(3):
                    await pos.sell([QtyLine(sku="SKU-W", qty=1), QtyLine(sku="SKU-X", qty=1)])
                while seen[-1].on_hand > 7:
                    seen.append(await asyncio.wait_for(anext(updates), DEADLINE_S))

    assert {(m.location_id, m.sku) for m in seen} == {(loc, "SKU-W")}
    assert (seen[0].on_hand, seen[0].available, seen[0].version) == (10, 10, 1)
    versions = [m.version for m in seen]
    assert versions == sorted(set(versions))
    assert (seen[-1].on_hand, seen[-1].available, seen[-1].version) == (7, 7, 4)


async def test_pickup_answers_the_stores_that_can_hold_the_basket_over_http(
    migrated_database_url: str, nats_server: NatsServer
) -> None:
    plenty, little, sku = unique("store"), unique("store"), unique("SKU")
    roles = ["worker", "relay", "api"]
    async with running_service(migrated_database_url, nats_server.url, [plenty, little], roles) as settings:
        await stock(migrated_database_url, plenty, {sku: 3})
        await stock(migrated_database_url, little, {sku: 1})
        engine = create_engine(migrated_database_url, pool_size=1)
        try:
            key = await create_key(engine, "ecommerce", (), "test web shop")
        finally:
            await engine.dispose()
        api_url = f"http://{settings.http_host}:{settings.http_port}"
        await wait_until(
            lambda: answers(f"{api_url}/health/live"), what="the API listening", timeout=DEADLINE_S
        )

        async with await EcommerceClient.open(nats_server.url, api_url=api_url, api_key=key) as shop:
            [store] = await shop.http.pickup([QtyLine(sku=sku, qty=2)])
            both = await shop.http.pickup([QtyLine(sku=sku, qty=1)], near=(52.37, 4.89), limit=5)
        async with await EcommerceClient.open(nats_server.url, api_url=api_url, api_key="ssk_x") as stranger:
            with pytest.raises(ApiError) as refused:
                await stranger.http.pickup([QtyLine(sku=sku, qty=1)])

    assert (store.location_id, [(line.sku, line.available) for line in store.lines]) == (plenty, [(sku, 3)])
    assert {found.location_id for found in both} == {plenty, little}
    assert (refused.value.status, refused.value.error) == (401, "unauthorized")


async def answers(url: str) -> bool:
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(url)).status_code == 200
        except httpx.TransportError:
            return False
