"""Key management: `stocksync keys list | revoke | rotate`, misuse as one line and exit 2, and a revocation
that reaches every API process through its notification, not through a cache entry running out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import create_engine
from stocksync.cli import main
from stocksync.http.app import create_app
from stocksync.service.keys import KeyVerifier, create_key, revoke_key
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support_http import engine  # noqa: F401  (fixture)
from tests.support_nats import wait_until

HOUR = 3600.0


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, migrated_database_url: str, tmp_path):
    """``stocksync …`` in this process (on a thread: it runs its own loop): (exit code, stdout, stderr)."""
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("STOCKSYNC_NATS_URL", "nats://127.0.0.1:1")  # set, so nothing embedded starts
    monkeypatch.setenv("STOCKSYNC_HOME", str(tmp_path))
    # main() points structlog at sys.stderr, which is capsys's for this test only: keep the session's set-up
    monkeypatch.setattr("stocksync.cli.configure_logging", lambda *_: None)

    async def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def key_id(key: str) -> str:
    return key.split("_")[1]


async def listed(cli, capsys) -> dict[str, dict]:
    code, out, _ = await cli(capsys, "keys", "list", "--json")
    assert code == 0
    return {row["key_id"]: row for row in json.loads(out)}


async def test_list_shows_every_key_without_its_secret_and_revoke_sets_revoked_at(
    cli, capsys, engine: AsyncEngine
) -> None:
    key = await create_key(engine, "pos", ["store-k1", "store-k2"], label="till 7")
    row = (await listed(cli, capsys))[key_id(key)]
    assert row["role"] == "pos" and row["locations"] == ["store-k1", "store-k2"]
    assert row["label"] == "till 7" and row["created_at"] and row["revoked_at"] is None
    assert set(row) == {"key_id", "role", "locations", "label", "created_at", "revoked_at"}

    code, out, err = await cli(capsys, "keys", "list")
    assert code == 0 and key_id(key) in out and key.split("_", 2)[2] not in out + err

    assert (await cli(capsys, "keys", "revoke", key_id(key)))[0] == 0
    first = (await listed(cli, capsys))[key_id(key)]["revoked_at"]
    assert first is not None
    assert (await cli(capsys, "keys", "revoke", key_id(key)))[0] == 0  # twice is fine
    assert (await listed(cli, capsys))[key_id(key)]["revoked_at"] == first


async def test_rotate_prints_a_key_of_the_same_scope_and_revokes_the_old_one_at_once(
    cli, capsys, engine: AsyncEngine
) -> None:
    old = await create_key(engine, "staff", ["store-k3"], label="back office")
    code, out, _ = await cli(capsys, "keys", "rotate", key_id(old))
    assert code == 0
    (new,) = out.split()
    verifier = KeyVerifier(engine)
    assert (await verifier.verify(new)).locations == frozenset({"store-k3"})
    rows = await listed(cli, capsys)
    assert rows[key_id(old)]["revoked_at"] is not None
    assert {k: rows[key_id(new)][k] for k in ("role", "locations", "label", "revoked_at")} == {
        "role": "staff",
        "locations": ["store-k3"],
        "label": "back office",
        "revoked_at": None,
    }
    code, _, err = await cli(capsys, "keys", "rotate", key_id(old))  # a revoked key is not rotated again
    assert code == 2 and "revoked already" in err


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "--role", "admin", "--location", "x"),
        ("keys", "create", "--role", "pos"),
        ("keys", "create", "--role", "staff", "--location", "bad id"),
        ("keys", "revoke", "000000000000"),
        ("keys", "revoke", "not-a-key-id"),
        ("keys", "rotate", "000000000000"),
        ("keys", "rotate", "ssk_000000000000_" + "A" * 43),
    ],
)
async def test_each_misuse_is_one_line_and_exit_2(cli, capsys, args: tuple[str, ...]) -> None:
    code, out, err = await cli(capsys, *args)
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "A" * 43 not in err


@pytest.fixture
async def two_api_processes(
    migrated_database_url: str,
) -> AsyncIterator[tuple[list[httpx.AsyncClient], list[KeyVerifier]]]:
    """Two apps, each with its own engine and verifier as two `stocksync serve --role api` processes have,
    whose cache entries would outlive the test: only a notification can make them refuse a key."""
    async with AsyncExitStack() as stack:
        clients, verifiers = [], []
        for _ in range(2):
            engine = create_engine(migrated_database_url, pool_size=2)
            stack.push_async_callback(engine.dispose)
            verifiers.append(verifier := KeyVerifier(engine, ttl_s=HOUR, fallback_ttl_s=HOUR))
            app = create_app(engine=engine, ledger=GroupCommitLedger(engine), key_verifier=verifier)
            await verifier.start()  # as the app's start-up does, here on this test's loop
            stack.push_async_callback(verifier.stop)
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://stocksync.test")
            clients.append(await stack.enter_async_context(client))

        async def listening() -> bool:
            return all(verifier.listening for verifier in verifiers)

        await wait_until(listening, timeout=30)
        yield clients, verifiers


async def statuses(clients: list[httpx.AsyncClient], key: str) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    return [(await client.get("/v1/locations", headers=headers)).status_code for client in clients]


async def test_a_revocation_reaches_every_api_process_through_its_notification(
    two_api_processes, engine: AsyncEngine
) -> None:
    clients, _ = two_api_processes
    revoked, kept = await create_key(engine, "ecommerce"), await create_key(engine, "ecommerce")
    assert await statuses(clients, revoked) == [200, 200]  # cached now, for an hour
    await revoke_key(engine, key_id(revoked))

    async def refused() -> bool:
        return await statuses(clients, revoked) == [401, 401]

    await wait_until(refused, timeout=30)
    assert await statuses(clients, kept) == [200, 200]


async def test_a_listener_whose_connection_dies_listens_again_and_misses_no_revocation(
    two_api_processes, engine: AsyncEngine
) -> None:
    clients, verifiers = two_api_processes
    key = await create_key(engine, "ecommerce")
    assert await statuses(clients, key) == [200, 200]
    async with engine.connect() as conn:  # both listeners' connections, then revoke while they are away
        assert await conn.scalar(LISTENERS_KILLED) >= 2
    await revoke_key(engine, key_id(key))

    async def listening_and_refused() -> bool:
        return all(v.listening for v in verifiers) and await statuses(clients, key) == [401, 401]

    await wait_until(listening_and_refused, timeout=30)


LISTENERS_KILLED = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE application_name = 'stocksync-keys' AND datname = current_database()"
)


async def test_a_database_that_cannot_be_reached_is_one_line_and_exit_2(
    cli, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    code, out, err = await cli(capsys, "keys", "list")
    assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
