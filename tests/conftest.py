"""Real infrastructure for every suite: a PostgreSQL server with per-session databases, and nats-servers.

PostgreSQL is the one at 127.0.0.1:5432 when it answers (or ``STOCKSYNC_TEST_POSTGRES_URL``; the value
``embedded`` forces the embedded one), else an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import pytest
import structlog

from stocksync.embedded.postgres import start_postgres
from tests.support import NatsServer, drop_database, make_database, postgres_answers

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

pytest_plugins = ["tests.watchdog"]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL on a PostgreSQL server that lives for the session."""
    configured = os.environ.get("STOCKSYNC_TEST_POSTGRES_URL")
    if configured and configured != "embedded":
        yield configured
        return
    if configured is None and postgres_answers(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    server = start_postgres(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> Iterator[str]:
    """An empty database of this session's own, dropped at the end."""
    url = make_database(postgres_url)
    yield url
    drop_database(postgres_url, url)


@pytest.fixture(scope="session")
def migrated_database_url(database_url: str) -> str:
    """``database_url`` (the same database) with the stocksync schema migrated to head."""
    from stocksync.migrate import migrate_database

    migrate_database(database_url)
    return database_url


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Factory of empty databases for a single test, dropped after it."""
    made: list[str] = []

    def make() -> str:
        made.append(make_database(postgres_url))
        return made[-1]

    yield make
    for url in made:
        drop_database(postgres_url, url)


@pytest.fixture(scope="session", autouse=True)
def _loggers_never_cached() -> Iterator[None]:
    """The in-process CLI configures logging as a process does, caching each logger on first use; a cached
    logger keeps that configuration for the rest of the session and ignores a later test's ``capture_logs``.
    Here the CLI's set-up caches nothing."""
    from stocksync import cli

    configure = cli.configure_logging

    def uncached(*args: object) -> None:
        configure(*args)
        structlog.configure(cache_logger_on_first_use=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "configure_logging", uncached)
        yield


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """What a test configured of logging (the CLI's stderr renderer and handler, bound to the stderr the test
    captured) is undone after it, so it never prints into the next tests' output."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """The session's JetStream nats-server; tests may ``stop()`` and ``start()`` it (same port and store)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _nats_server_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stopped the shared nats-server and failed before restarting it must not break the next."""
    yield
    if "nats_server" in request.fixturenames:
        request.getfixturevalue("nats_server").start()


@pytest.fixture
def nats_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], NatsServer]]:
    """Factory of extra, independent nats-servers for a single test, stopped after it."""
    started: list[NatsServer] = []

    def start() -> NatsServer:
        server = NatsServer(tmp_path_factory.mktemp("nats"))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
