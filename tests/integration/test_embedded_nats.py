"""The embedded nats-server's Go runtime: half the cores, unless GOMAXPROCS says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from stocksync.embedded.nats import start_nats


def _gomaxprocs_of_a_started_server(data_dir: Path) -> str | None:
    nats = start_nats(data_dir)
    try:
        return psutil.Process(nats.pid).environ().get("GOMAXPROCS")
    finally:
        nats.stop()


def test_the_embedded_nats_server_runs_on_half_the_cores(tmp_path: Path, monkeypatch) -> None:
    """It shares the machine with PostgreSQL and every stocksync process (benchmarks/profiling.md)."""
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert _gomaxprocs_of_a_started_server(tmp_path / "nats") == str(max(1, cores // 2))


@pytest.mark.parametrize("value", ["1", "3"])
def test_gomaxprocs_in_the_environment_is_the_operators_choice(
    tmp_path: Path, monkeypatch, value: str
) -> None:
    monkeypatch.setenv("GOMAXPROCS", value)
    assert _gomaxprocs_of_a_started_server(tmp_path / "nats") == value
