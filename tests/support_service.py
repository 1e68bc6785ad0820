"""`stocksync` as a retailer runs it, for the end-to-end tests: its command line and `serve` in processes of
their own, in an environment without the caller's STOCKSYNC_ settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def service_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update({f"STOCKSYNC_{name.upper()}": value for name, value in settings.items()})
    return env


def stocksync_cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "stocksync.cli", *args],
        env=env,
        cwd=cwd,
        timeout=180,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done


class Service:
    """`stocksync serve` in a process of its own, its log kept for inspection."""

    def __init__(
        self, env: dict[str, str], log_path: Path, cwd: Path = ROOT, roles: tuple[str, ...] = ()
    ) -> None:
        self.base = f"http://127.0.0.1:{env['STOCKSYNC_HTTP_PORT']}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stocksync.cli", "serve", *(f"--role={role}" for role in roles)],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {seconds}s:\n{self.log_path.read_text()}")

    def wait_for_log(self, text: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log_path.read_text():
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, f"no {text} in {seconds}s:\n{self.log_path.read_text()}"
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._log.close()
        return code


async def kv_at_version(kv, key: str, version: int, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        value = json.loads((await kv.get(key)).value)
        if value["version"] >= version or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)
