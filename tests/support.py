"""Helpers behind the shared fixtures: real PostgreSQL databases and nats-servers, never mocks."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from stocksync.embedded.nats import EmbeddedNats, start_nats
from stocksync.messaging.nats_auth import server_config
from stocksync.settings import Settings

T = TypeVar("T")


def run_sql(url: str, *statements: str) -> list[Any]:
    """Run statements outside any transaction (CREATE/DROP DATABASE need that); return the last one's rows.

    Blocking, and callable from async tests too: it runs its own event loop on a separate thread.
    """

    async def run() -> list[Any]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[Any] = []
            for statement in statements:
                rows = await connection.fetch(statement)
            return rows
        finally:
            await connection.close()

    return _blocking(run())


def postgres_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a PostgreSQL server accepts ``url`` within ``timeout`` seconds."""

    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=timeout)
        await connection.close()

    try:
        _blocking(asyncio.wait_for(probe(), timeout))
    except Exception:  # refused, timed out, auth failed: all mean not usable here
        return False
    return True


def _blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``; keeps host, port and ``?host=`` unix-socket queries."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def make_database(postgres_url: str) -> str:
    """Create an empty, uniquely named database on the server and return its URL."""
    name = f"stocksync_test_{os.getpid()}_{secrets.token_hex(4)}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}"')
    return with_database(postgres_url, name)


def drop_database(postgres_url: str, url: str) -> None:
    """Drop the database ``url`` names, disconnecting whatever still uses it."""
    name = urlsplit(url).path.lstrip("/")
    run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class NatsServer:
    """A nats-server of the test's own, with JetStream stored on disk; restarts keep its port and streams."""

    def __init__(self, store_dir: Path, *, access: Settings | None = None) -> None:
        """``access``: settings with the service's NKey and the callout issuer seed; the server then runs with
        NATS access on (`nats_auth.server_config`). Without, it is open, as most tests need."""
        self.store_dir = store_dir
        self.access = access
        self.port: int | None = None  # chosen by the server on first start, then kept
        self._server: EmbeddedNats | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "start() the server first"
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start it unless running (SIGTERM-stopped streams are flushed, so messages survive)."""
        if self._server is None:
            config = server_config(self.access) if self.access is not None else None
            self._server = start_nats(self.store_dir, self.port, config=config)
            self.port = self._server.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
