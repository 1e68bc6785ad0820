"""The database baseline: pgbench's built-in TPC-B-like script on the same PostgreSQL, in a scratch database.

``pgbench -i -s SCALE`` then ``pgbench -c CLIENTS -j THREADS -T SECONDS``: each transaction updates three rows
(account, teller, branch), inserts one history row and commits. Its transactions/s are what this server does
for small write transactions from 4 clients on this machine, in this run.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int
    scale: int
    clients: int
    threads: int
    seconds: int
    init_seconds: float
    command: str
    version: str


def connection_args(url: str) -> list[str]:
    """pgbench flags for a postgresql:// URL (host may be a unix socket dir given as ?host=)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    args = []
    if host:
        args += ["-h", unquote(host)]
    if parts.port:
        args += ["-p", str(parts.port)]
    args += ["-U", parts.username or "postgres"]
    return args


def run_pgbench(
    binary: str, url: str, *, scale: int, clients: int, threads: int, seconds: int
) -> PgbenchResult:
    database = urlsplit(url).path.lstrip("/")
    conn = connection_args(url)
    started = time.perf_counter()
    subprocess.run(
        [binary, "-i", "-q", "-s", str(scale), *conn, database], check=True, capture_output=True, text=True
    )
    init_seconds = time.perf_counter() - started
    command = [binary, "-c", str(clients), "-j", str(threads), "-T", str(seconds), *conn, database]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    out = done.stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    transactions = re.search(r"number of transactions actually processed: (\d+)", out)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    return PgbenchResult(
        tps=tps,
        latency_ms=float(latency.group(1)) if latency else float("nan"),
        transactions=int(transactions.group(1)) if transactions else 0,
        scale=scale,
        clients=clients,
        threads=threads,
        seconds=seconds,
        init_seconds=init_seconds,
        command=f"pgbench -i -s {scale}; pgbench -c {clients} -j {threads} -T {seconds}",
        version=version,
    )
