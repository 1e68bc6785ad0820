"""What the embedded servers share: free ports, stopping a child, and the lock and holder list of a data dir."""

from __future__ import annotations

import fcntl
import json
import random
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_issued: set[int] = set()  # the ports `free_port` handed out in this process


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port found free just now, never one this process handed out before, and below the kernel's range
    for outgoing connections: a port the OS picks (bind to 0) comes from that range, where any client's
    connect may take it before the server meant to have it binds it. Another process may still take it
    first: prefer letting servers pick."""
    below = _outgoing_ports_start()
    for _ in range(200):
        port = random.randrange(_LOWEST_PORT, below) if below > _LOWEST_PORT else _os_port(host)
        if port not in _issued and _bindable(host, port):
            _issued.add(port)
            return port
    raise OSError("no free TCP port found")


_LOWEST_PORT = 10_000  # below: the well-known and registered services' usual ports


def _outgoing_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default, and near enough elsewhere


def _os_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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


@contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Serialise start/stop decisions of all processes sharing ``data_dir``."""
    with (data_dir / ".lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def live_holders(data_dir: Path) -> list[int]:
    """Pids holding the server (once per hold), minus processes that died without letting go."""
    path = data_dir / "holders.json"
    pids: list[int] = json.loads(path.read_text()) if path.exists() else []
    return [pid for pid in pids if psutil.pid_exists(pid)]


def write_holders(data_dir: Path, pids: list[int]) -> None:
    (data_dir / "holders.json").write_text(json.dumps(pids))
