"""The watchdog turns a stalled asyncio test into a failed run that names the task it waits in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STALLED = """
import asyncio

async def waits_for_ever():
    await asyncio.Event().wait()

async def test_stalls():
    await asyncio.create_task(waits_for_ever(), name="the-stalled-part")
"""


def test_a_stalled_test_ends_the_run_with_its_task_stacks(tmp_path: Path) -> None:
    (tmp_path / "test_stall.py").write_text(STALLED)
    env = {**os.environ, "STOCKSYNC_TEST_TIMEOUT_S": "2", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.watchdog",
            "-p",
            "asyncio",
            str(tmp_path / "test_stall.py"),
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "test_stall.py::test_stalls has run for more than 2 s" in run.stderr
    assert "the-stalled-part" in run.stderr
    assert "waits_for_ever" in run.stderr
