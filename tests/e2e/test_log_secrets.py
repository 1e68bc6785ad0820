"""No API key, body of a failed request or password in any log line of a running `stocksync serve`.

The service runs with a database password and NATS credentials in its URLs (the local PostgreSQL trusts, so
the password is accepted and ignored; so are NATS credentials by a server without auth), NATS down at first,
and is sent valid, revoked, unknown and malformed keys and invalid bodies carrying a marker, over HTTP and
NATS. Then its whole captured log is searched for each secret.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import nats
import pytest

from stocksync.embedded.processes import free_port
from tests.support_nats import ServiceProcess, stop_service_processes

MARKER = "zq" + uuid.uuid4().hex[:12]  # in every bad body; must never be logged
DEADLINE_S = 120


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stocksync.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _wait(check, what: str, service: ServiceProcess) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert service.alive, service.log_tail()
        assert time.monotonic() < deadline, f"no {what}:\n{service.log_tail()}"
        time.sleep(0.2)


def _secret(key: str) -> str:
    return key.split("_", 2)[2]


@pytest.fixture
def service(tmp_path, fresh_database, nats_server_factory):
    """`stocksync serve` (every role, JSON logs) with credentials in both URLs, started while NATS is down."""
    nats_server = nats_server_factory()
    port = nats_server.port
    db_password, nats_token, nats_password = (f"pw{secrets.token_hex(8)}" for _ in range(3))
    parts = urlsplit(fresh_database())
    database_url = parts._replace(netloc=f"{parts.username}:{db_password}@{parts.hostname}:{parts.port}")
    nats_url = f"nats://{nats_token}@127.0.0.1:{port},nats://till:{nats_password}@127.0.0.1:{port}"
    service = ServiceProcess([], urlunsplit(database_url), nats_url, tmp_path / "serve.log")
    service.env |= {"STOCKSYNC_HTTP_PORT": str(free_port()), "STOCKSYNC_LOG_FORMAT": "json"}
    try:
        _cli(service.env, "migrate")
        nats_server.stop()  # the service starts while NATS is away: connecting fails and is logged
        service.start()
        failing = ("nats_unreachable", "nats_error", "nats: encountered error")
        _wait(lambda: any(text in service.log() for text in failing), "NATS connection errors", service)
        nats_server.start()
        base = f"http://127.0.0.1:{service.env['STOCKSYNC_HTTP_PORT']}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, "readiness", service)
        yield service, base, f"nats://127.0.0.1:{port}", (db_password, nats_token, nats_password)
    finally:
        stop_service_processes()


def _bad_bodies() -> list[tuple[str, bytes]]:
    event = {
        "event_id": f"ev-{MARKER}",
        "type": "sale",
        "location_id": "store-logs",
        "occurred_at": "2026-01-01T00:00:00Z",
        "lines": [{"sku": "SKU-1", "qty": 1}],
    }
    nested = "[" * 1000 + f'"{MARKER}"' + "]" * 1000
    return [
        ("/v1/events", json.dumps(event | {"type": MARKER}).encode()),
        ("/v1/events", json.dumps(event | {"lines": [{"sku": MARKER, "qty": "x"}]}).encode()),
        ("/v1/events", json.dumps(event | {"location_id": f"bad {MARKER}"}).encode()),
        ("/v1/events", f'{{"event_id": "{MARKER}", '.encode()),
        ("/v1/events", json.dumps(event)[:-1].encode() + f', "x": {nested}}}'.encode()),
        ("/v1/reservations", json.dumps({"location_id": "store-logs", MARKER: 1, "lines": []}).encode()),
        ("/v1/reservations", json.dumps({"location_id": MARKER * 20, "channel": MARKER}).encode()),
    ]


async def test_no_key_body_or_password_is_ever_logged(service) -> None:
    process, base, nats_url, passwords = service
    env = process.env
    admin = _cli(env, "keys", "create", "--role", "admin")
    revoked = _cli(env, "keys", "create", "--role", "ecommerce")
    unknown = f"ssk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    malformed = [f"ssk_{secrets.token_hex(6)}_{MARKER}", f"ssk_x{MARKER}", f"nonsense-{MARKER}"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def status(key: str, path: str = "/v1/locations") -> int:
            return (await client.get(path, headers={"Authorization": f"Bearer {key}"})).status_code

        assert await status(revoked) == 200
        _cli(env, "keys", "revoke", revoked.split("_")[1])
        deadline = time.monotonic() + DEADLINE_S
        while await status(revoked) != 401:
            assert time.monotonic() < deadline
        assert [await status(k) for k in (unknown, *malformed)] == [401] * 4
        assert await status(admin, f"/v1/reservations/{MARKER}") == 404
        answers = [
            await client.post(
                path,
                content=body,
                headers={"Authorization": f"Bearer {admin}", "content-type": "application/json"},
            )
            for path, body in _bad_bodies()
        ]
        assert all(answer.status_code >= 400 for answer in answers)

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        good = {"type": "sale", "location_id": "store-logs", "occurred_at": "2026-01-01T00:00:00Z"}
        for headers, body in (
            ({"Nats-Msg-Id": f"id-{MARKER}"}, good | {"event_id": "ev-1", "lines": [{"sku": "S", "qty": 1}]}),
            (None, good | {"event_id": f"ev-{MARKER}", "type": MARKER}),
            (None, good | {"event_id": "ev-2", "lines": [{"sku": "S", "qty": 1}], "extra": MARKER}),
            (None, good | {"event_id": "ev-3", "location_id": f"store-{MARKER}", "lines": []}),
        ):
            await js.publish("stocksync.in.store-logs.sale", json.dumps(body).encode(), headers=headers)
        await js.publish("stocksync.in.store-logs.sale", f"not json {MARKER}".encode())
    finally:
        await nc.close()
    _wait(lambda: process.log().count('"dead_lettered"') >= 4, "dead letters", process)
    assert process.stop() == 0

    log = process.log()
    assert "dead_lettered" in log
    secrets_ = [_secret(admin), _secret(revoked), _secret(unknown), MARKER, *passwords]
    assert [secret for secret in secrets_ if secret in log] == [], log[-5000:]
