"""What the embedded servers share: free ports, stopping a child, and the lock and holder list of a data dir."""

from __future__ import annotations

import fcntl
import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS just found free (it may be taken again before use; prefer letting servers pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
