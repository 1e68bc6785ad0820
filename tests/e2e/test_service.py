"""The running service, as a retailer starts it: `stocksync` processes over HTTP and NATS."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import nats
import psutil

from stocksync.embedded.processes import free_port
from tests.support_service import Service, kv_at_version, service_env, stocksync_cli


def test_on_the_embedded_default_migrate_demo_serve_and_pickup_lists_stores(tmp_path: Path) -> None:
    home = tmp_path / ".stocksync"  # the default, relative to where stocksync runs
    env = service_env(http_port=str(free_port()), log_format="json")
    stocksync_cli(env, "migrate", cwd=tmp_path)
    stocksync_cli(env, "migrate", cwd=tmp_path)  # safe to repeat
    stocksync_cli(env, "demo", cwd=tmp_path)
    demo = json.loads((home / "demo-keys.json").read_text())
    service = Service(env, tmp_path / "serve.log", cwd=tmp_path)
    try:
        answer = httpx.get(
            f"{service.base}/v1/pickup",
            params={"sku": demo["sku"], "near": "52.3731,4.8926"},
            headers={"Authorization": f"Bearer {demo['keys']['ecommerce']}"},
        )
        assert httpx.get(f"{service.base}/v1/pickup", params={"sku": demo["sku"]}).status_code == 401
        shop = {"Authorization": f"Bearer {demo['keys']['ecommerce']}"}
        web = httpx.get(
            f"{service.base}/v1/channels/web/availability", params={"sku": demo["sku"]}, headers=shop
        )
        order = {"order_id": "web-1001", "channel_id": "web", "lines": [{"sku": demo["sku"], "qty": 1}]}
        placed = httpx.post(f"{service.base}/v1/orders", json=order, headers=shop)
    finally:
        assert service.stop() == 0
    (sellable,) = web.json()["items"]  # the README's channel read and order
    assert sellable["available"] == sum(x["available"] for x in sellable["locations"]) - 2 > 0
    assert [x["location_id"] for x in sellable["locations"]][:2] == ["wh-ams", "online-eu"]
    assert (placed.status_code, placed.json()["status"]) == (201, "allocated"), placed.text
    assert answer.status_code == 200, answer.text
    stores = answer.json()["stores"]
    assert stores, "the demo stocks its first sku in some pickup stores"
    distances = [store["distance_km"] for store in stores]
    assert distances == sorted(distances)
    assert all(line["available"] >= 1 for store in stores for line in store["lines"])
    assert (home / "pg" / "PG_VERSION").exists(), "data kept under ./.stocksync for the next start"
    stocksync_cli(env, "migrate", cwd=tmp_path)  # restarting on the same data works
    assert not _embedded_processes(tmp_path), "embedded servers stop with the last stocksync process"


def test_two_api_processes_share_one_port_and_the_second_answers_when_the_first_stops(
    tmp_path: Path, fresh_database, nats_server
) -> None:
    """One Python process uses one core: a machine runs one API process per core, on one port."""
    env = service_env(
        database_url=fresh_database(), nats_url=nats_server.url, http_port=str(free_port()), log_format="json"
    )
    stocksync_cli(env, "migrate")
    first = Service(env, tmp_path / "api-1.log", roles=("api",))
    second = Service(env, tmp_path / "api-2.log", roles=("api",))  # ready already: the first answers
    try:
        second.wait_for_log('"serving"')  # without a shared port it would exit: address in use
        assert first.stop() == 0
        assert httpx.get(f"{second.base}/health/ready", timeout=5).status_code == 200
    finally:
        assert second.stop() == 0


def test_a_key_revoked_with_the_cli_is_refused_by_every_api_process(
    tmp_path: Path, fresh_database, nats_server
) -> None:
    database_url = fresh_database()
    ports = [str(free_port()), str(free_port())]
    envs = [
        service_env(database_url=database_url, nats_url=nats_server.url, http_port=port, log_format="json")
        for port in ports
    ]
    stocksync_cli(envs[0], "migrate")
    key = stocksync_cli(envs[0], "keys", "create", "--role", "ecommerce").stdout.strip()
    services = [Service(env, tmp_path / f"api-{n}.log", roles=("api",)) for n, env in enumerate(envs)]
    try:

        def statuses() -> list[int]:
            headers = {"Authorization": f"Bearer {key}"}
            return [httpx.get(f"{s.base}/v1/locations", headers=headers).status_code for s in services]

        assert statuses() == [200, 200]  # each has the key cached now
        stocksync_cli(envs[0], "keys", "revoke", key.split("_")[1])
        deadline = time.monotonic() + 60
        while (answers := statuses()) != [401, 401]:
            assert time.monotonic() < deadline, answers
            time.sleep(0.1)
    finally:
        assert [service.stop() for service in services] == [0, 0]


async def test_a_sale_over_nats_and_a_reservation_over_http_reach_the_ledger_and_the_out_stream(
    tmp_path: Path, fresh_database, nats_server
) -> None:
    env = service_env(
        database_url=fresh_database(), nats_url=nats_server.url, http_port=str(free_port()), log_format="json"
    )
    stocksync_cli(env, "migrate")
    stocksync_cli(env, "demo")
    key = stocksync_cli(env, "keys", "create", "--role", "admin").stdout.strip().splitlines()[-1]
    service = Service(env, tmp_path / "serve.log")
    store, sku = "store-ams-dam", f"SKU-E2E-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {key}"}
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        availability = await nc.subscribe(f"stocksync.out.availability.{store}.{sku}")
        async with httpx.AsyncClient(base_url=service.base, headers=headers) as http:
            receipt = _event("receipt", store, [{"sku": sku, "qty": 5}])
            assert (await http.post("/v1/events", json=receipt)).json()["outcome"] == "applied"
            sale = _event("sale", store, [{"sku": sku, "qty": 2}])
            await js.publish(
                f"stocksync.in.{store}.sale",
                msgspec.json.encode(sale),
                headers={"Nats-Msg-Id": sale["event_id"]},
            )
            versions = [json.loads((await availability.next_msg(timeout=10)).data)]
            while versions[-1]["on_hand"] != 3:  # the receipt's version may be conflated into the sale's
                versions.append(json.loads((await availability.next_msg(timeout=10)).data))
            reservation = await http.post(
                "/v1/reservations",
                json={"location_id": store, "channel": "ecommerce", "lines": [{"sku": sku, "qty": 3}]},
            )
            too_many = await http.post(
                "/v1/reservations",
                json={"location_id": store, "channel": "ecommerce", "lines": [{"sku": sku, "qty": 1}]},
            )
            position = (await http.get("/v1/availability", params={"sku": sku, "location_id": store})).json()
            outcome = (await http.get(f"/v1/events/{sale['event_id']}")).json()
        kv = await js.key_value("stocksync_availability")
        entry = await kv_at_version(kv, f"{store}.{sku}", 3)
    finally:
        await nc.close()
        assert service.stop() == 0
    assert [(v["on_hand"], v["version"]) for v in versions] in ([(5, 1), (3, 2)], [(3, 2)])
    assert outcome["outcome"] == "applied"
    assert reservation.status_code == 201 and reservation.json()["status"] == "held"
    assert too_many.status_code == 409 and too_many.json()["error"] == "insufficient_stock"
    assert position["items"] == [
        {
            "location_id": store,
            "sku": sku,
            "on_hand": 3,
            "reserved": 3,
            "damaged": 0,
            "safety_stock": 0,
            "available": 0,
            "version": 3,
        }
    ]
    assert entry["available"] == 0 and entry["reserved"] == 3
    log = (tmp_path / "serve.log").read_text()
    secret = key.split("_", 2)[2]  # the secret may itself hold "_": split off ssk_ and the key id only
    assert key not in log and secret not in log, "an API key must never be logged"
    batches = [json.loads(line) for line in log.splitlines() if '"batch_applied"' in line]
    assert batches and all({"events", "applied", "duplicate", "rejected"} <= b.keys() for b in batches)


def _event(type_: str, location_id: str, lines: list[dict]) -> dict:
    return {
        "event_id": f"e2e:{uuid.uuid4().hex}",
        "type": type_,
        "location_id": location_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "lines": lines,
    }


def _embedded_processes(tmp_path: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and any(str(tmp_path) in part for part in p.info["cmdline"])
    ]
