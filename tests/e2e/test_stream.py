"""`GET /v1/stream` on the running service: positions first, then changes as the worker commits and the relay
publishes them (spec section 6)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime

import httpx

from tests.support_http import Api, admin, client, engine  # noqa: F401  (fixtures)
from tests.support_live import (
    HEARTBEAT_S,
    Events,
    Served,
    availability,
    sell_over_nats,
    served,  # noqa: F401  (fixture)
    unique,
)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_the_stream_sends_the_positions_then_a_sale_over_nats_and_a_reservation(served: Served) -> None:
    store, other = served.store(), served.store()
    sku, never = unique("SKU"), unique("SKU")
    served.post_event("receipt", store, [{"sku": sku, "qty": 10}])
    key, till = served.key("staff", store), served.key("pos", store)
    params = [("location_id", store), ("sku", sku), ("sku", never)]
    async with httpx.AsyncClient(base_url=served.base, headers=_bearer(key), timeout=30) as http:
        async with http.stream("GET", "/v1/stream", params=params) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            events = Events(answer)
            first = [await events.until(availability) for _ in range(2)]
            await sell_over_nats(served, till, store, sku, 3)
            sold = await events.until(availability)
            served.admin.post(
                "/v1/reservations",
                json={"location_id": store, "channel": "staff", "lines": [{"sku": sku, "qty": 2}]},
            )
            other_store = served.admin.post(  # at a location not asked for: not on this stream
                "/v1/reservations",
                json={"location_id": other, "channel": "staff", "lines": [{"sku": sku, "qty": 1}]},
            )
            seen: dict[str, dict] = {}  # the position and the reservation go out in either order
            while len(seen) < 2:
                found = await events.until(lambda e: e.get("event") in ("availability", "reservation"))
                seen[found["event"]] = found
            held, reserved = seen["reservation"], seen["availability"]
    assert [(event["id"], availability(event)) for event in first] == [
        (f"{store}.{sku}.1", _position(store, sku, on_hand=10, version=1)),
        (f"{store}.{never}.0", _position(store, never)),
    ]
    assert sold["id"] == f"{store}.{sku}.2"
    assert availability(sold) == _position(store, sku, on_hand=7, version=2)
    assert other_store.status_code == 409  # nothing there: a refusal, not a reservation event here either
    reservation = json.loads(held["data"])
    assert (reservation["location_id"], reservation["status"], reservation["lines"]) == (
        store,
        "held",
        [{"sku": sku, "qty": 2}],
    )
    assert availability(reserved) == _position(store, sku, on_hand=7, reserved=2, version=3)


def _position(location_id: str, sku: str, *, on_hand: int = 0, reserved: int = 0, version: int = 0) -> dict:
    return {
        "location_id": location_id,
        "sku": sku,
        "on_hand": on_hand,
        "reserved": reserved,
        "damaged": 0,
        "safety_stock": 0,
        "available": max(0, on_hand - reserved),
        "version": version,
    }


async def test_a_quiet_stream_sends_a_heartbeat_comment(served: Served) -> None:
    store = served.store()
    async with httpx.AsyncClient(base_url=served.base, headers=served.admin.headers, timeout=30) as http:
        async with http.stream(
            "GET", "/v1/stream", params={"location_id": store, "sku": "SKU-QUIET"}
        ) as answer:
            events = Events(answer)
            await events.until(availability)
            started = time.monotonic()
            beats = [await events.until(lambda e: "heartbeat" in e.get("comments", ())) for _ in range(3)]
            elapsed = time.monotonic() - started
    assert len(beats) == 3
    assert elapsed < 3 * HEARTBEAT_S + 2, f"three heartbeats took {elapsed:.1f}s at {HEARTBEAT_S}s apart"


def test_the_stream_refuses_without_a_key_and_takes_the_session_cookie_on_get(served: Served) -> None:
    store = served.store()
    params = {"location_id": store, "sku": "SKU-1"}
    key = served.key("staff", store)
    without = httpx.get(f"{served.base}/v1/stream", params=params)
    unknown = httpx.get(f"{served.base}/v1/stream", params=params, headers=_bearer("ssk_nope_nope"))
    with httpx.stream(
        "GET", f"{served.base}/v1/stream", params=params, cookies={"stocksync_session": key}
    ) as by_cookie:
        cookie_status = by_cookie.status_code
    write_by_cookie = httpx.post(
        f"{served.base}/v1/reservations",
        json={"location_id": store, "channel": "staff", "lines": [{"sku": "SKU-1", "qty": 1}]},
        cookies={"stocksync_session": key},
    )
    assert (without.status_code, without.json()["error"]) == (401, "unauthorized")
    assert (unknown.status_code, unknown.json()["error"]) == (401, "unauthorized")
    assert cookie_status == 200
    assert write_by_cookie.status_code == 401, "a cookie never authorises a write (no cross-site writes)"


def test_the_stream_names_the_parameter_it_refuses(served: Served) -> None:
    store = served.store()
    cases = {
        "no sku": {"location_id": store},
        "no location": {"sku": "SKU-1"},
        "51 locations": [("sku", "SKU-1"), *(("location_id", f"L{n}") for n in range(51))],
        "a bad sku": {"location_id": store, "sku": "no spaces"},
    }
    answers = {name: served.admin.get("/v1/stream", params=params) for name, params in cases.items()}
    unknown = served.admin.get("/v1/stream", params={"location_id": unique("nowhere"), "sku": "SKU-1"})
    assert {name: (a.status_code, a.json()["field"]) for name, a in answers.items()} == {
        "no sku": (400, "sku"),
        "no location": (400, "location_id"),
        "51 locations": (400, "location_id"),
        "a bad sku": (400, "sku"),
    }
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_location")


async def test_a_client_that_does_not_read_is_disconnected_and_others_keep_their_stream(
    served: Served,
) -> None:
    stores, skus = [served.store() for _ in range(50)], [f"SKU-SLOW-{n}" for n in range(500)]
    before = served.metric('stocksync_stream_dropped_total{reason="slow_reader"}')
    slow = _slow_reader(served, stores, skus)  # 25,000 first positions (over 5 MB) it never reads
    async with httpx.AsyncClient(base_url=served.base, headers=served.admin.headers, timeout=30) as http:
        async with http.stream(
            "GET", "/v1/stream", params={"location_id": stores[0], "sku": skus[0]}
        ) as answer:
            events = Events(answer)
            await events.until(availability)
            await asyncio.sleep(2 * HEARTBEAT_S + 0.5)  # the slow one has taken nothing for that long
            published = await _flood(served, stores[0], skus[:2], updates=200)
            last = await events.until(
                lambda e: (availability(e) or {}).get("version") == published, timeout=60
            )
    received = _read_until_closed(slow)
    assert served.metric('stocksync_stream_dropped_total{reason="slow_reader"}') >= before + 1
    assert received < 25_000 * 180, f"the slow client was sent all it asked for ({received} bytes)"
    assert availability(last) == _position(stores[0], skus[0], on_hand=published, version=published)


def _slow_reader(served: Served, location_ids: list[str], skus: list[str]) -> socket.socket:
    """A client that asks for the stream and never reads, with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = served.base.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    query = "&".join([*(f"location_id={loc}" for loc in location_ids), *(f"sku={sku}" for sku in skus)])
    token = served.admin.headers["Authorization"]
    request = f"GET /v1/stream?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


async def _flood(served: Served, location_id: str, skus: list[str], updates: int) -> int:
    """``updates`` availability messages for each sku, as the relay publishes them (busy skus)."""
    nc = await served.nats()
    try:
        as_of = datetime.now(UTC).isoformat()
        for version in range(1, updates + 1):
            for sku in skus:
                body = {
                    "location_id": location_id,
                    "sku": sku,
                    "on_hand": version,
                    "reserved": 0,
                    "damaged": 0,
                }
                body |= {"safety_stock": 0, "available": version, "version": version, "as_of": as_of}
                await nc.publish(f"stocksync.out.availability.{location_id}.{sku}", json.dumps(body).encode())
        await nc.flush()
    finally:
        await nc.close()
    return updates


def _read_until_closed(sock: socket.socket, seconds: float = 30) -> int:
    """Bytes read until the server closed the connection; fails if it is still open after ``seconds``."""
    deadline = time.monotonic() + seconds
    received = 0
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not (chunk := sock.recv(65536)):
                return received
            received += len(chunk)
    except ConnectionResetError:
        return received
    except TimeoutError:
        pass
    finally:
        sock.close()
    raise AssertionError(f"the slow client was not disconnected in {seconds}s ({received} bytes read)")


async def test_without_nats_the_stream_is_unavailable_not_an_error(admin: Api) -> None:  # noqa: F811
    store = await admin.store()
    answer = await admin.get("/v1/stream", params={"location_id": store, "sku": "SKU-1"})
    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"
    assert "NATS" in answer.json()["detail"]


async def test_the_stream_is_in_the_openapi_contract(admin: Api) -> None:  # noqa: F811
    spec = (await admin.get("/schema/openapi.json")).json()
    operation = spec["paths"]["/v1/stream"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"apiKey": []} in operation["security"] and {"staffSession": []} in operation["security"]
    assert {p["name"] for p in operation["parameters"]} == {"location_id", "sku"}
    assert not asyncio.iscoroutine(operation)
