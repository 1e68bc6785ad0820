"""What uvicorn's parser refuses before the app (not HTTP, or a request line and headers over 64 KiB) is
answered in the API's error format, and every request within the documented bounds reaches the app."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from stocksync.adapters.database import create_engine
from stocksync.service.keys import create_key
from tests.support_http import LiveApi

LONGEST_ID = 64  # ID_PATTERN: sku and location ids
ERROR = {"error": "invalid_request", "field": "request"}


@pytest.fixture(scope="module")
def live(migrated_database_url: str) -> Iterator[LiveApi]:
    api = LiveApi(migrated_database_url)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def raw(api: LiveApi, request: bytes) -> bytes:
    """The whole answer to bytes sent on a socket of their own."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:04d}".ljust(LONGEST_ID, "x") for i in range(n)]


def refusal(answer: bytes) -> dict:
    """The body of a 400 JSON answer (failing otherwise)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head, head
    return httpx.Response(400, content=body).json()


def test_a_request_line_past_every_bound_is_a_json_400(live: LiveApi) -> None:
    query = "&".join(f"sku={sku}" for sku in ids("S", 1_200))  # over 64 KiB: httptools refuses it
    answer = raw(live, f"GET /v1/availability?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert ERROR.items() <= refusal(answer).items()


def test_what_is_not_http_is_a_json_400(live: LiveApi) -> None:
    assert ERROR.items() <= refusal(raw(live, b"HELLO THERE\r\n\r\n")).items()


async def test_the_largest_requests_within_bounds_reach_the_app(live: LiveApi, migrated_database_url: str) -> None:
    engine = create_engine(migrated_database_url, pool_size=1)
    try:
        key = await create_key(engine, "admin")
    finally:
        await engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}
    skus = [("sku", sku) for sku in ids("S", 500)]
    locations = [("location_id", loc) for loc in ids("L", 100)]
    pickup = [*skus, *(("qty", "500") for _ in range(500))]
    async with httpx.AsyncClient(base_url=live.url, headers=headers) as client:
        availability = await client.get("/v1/availability", params=[*skus, *locations])
        stores = await client.get("/v1/pickup", params=pickup)
    # the app's own answers: the positions bound, and an empty list (no store holds these skus)
    assert availability.status_code == 400 and availability.json()["field"] == "location_id"
    assert "at most 10000" in availability.json()["detail"]
    assert stores.status_code == 200, stores.text
