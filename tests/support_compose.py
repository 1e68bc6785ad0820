"""compose.yaml's topology run as local processes, read from compose.yaml itself so the two stay one.

What compose runs in containers runs here on loopback: `stocksync nats config` (the nats-config service)
writes the nodes' configuration from compose's settings (its development seeds: NATS access on, the auth
callout); the three nats-servers take compose's command lines, their addresses moved to free local ports;
`stocksync migrate` runs once; then every `stocksync serve` service in as many processes as its replicas,
each health-checked by the service's own healthcheck command until it passes. PostgreSQL is the suite's (a
database of its own) and Prometheus is left out: neither is stocksync. Processes of one machine share the
API port (``SO_REUSEPORT``, as API processes on one host do) and each has its own metrics port.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from stocksync.embedded.nats import nats_server_binary
from stocksync.embedded.processes import free_port, terminate
from tests.support_nats import ServiceProcess
from tests.support_service import service_env

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")

Service = dict[str, Any]


def compose_services() -> dict[str, Service]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def compose_env(service: Service) -> dict[str, str]:
    """The service's environment, ``${VAR:-default}`` read as its default (compose's development values)."""
    return {key: _DEFAULT.sub(r"\2", str(value)) for key, value in (service.get("environment") or {}).items()}


def cli(*args: str) -> list[str]:
    """A `stocksync` command line of compose as this interpreter runs it."""
    assert args[0] == "stocksync", args
    return [sys.executable, "-m", "stocksync.cli", *args[1:]]


@dataclass
class NatsNode:
    """One nats-server of compose, its command with the hosts and ports made local."""

    name: str
    command: list[str]
    health_url: str
    root: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def local_command(self, config: Path, cluster_ports: dict[str, int]) -> list[str]:
        local = {"-c": str(config), "-sd": str(self.root / self.name), "-m": str(self.http_port)}
        local["--cluster"] = f"nats://127.0.0.1:{self.cluster_port}"
        local["--routes"] = ",".join(
            f"nats://127.0.0.1:{cluster_ports[urlsplit(route).hostname or '']}"
            for route in self.command[self.command.index("--routes") + 1].split(",")
        )
        translated = [str(nats_server_binary())]
        for before, word in zip(self.command, self.command[1:], strict=False):
            translated.append(local.get(before, word))
        return [*translated, "-a", "127.0.0.1", "-p", str(self.port)]

    def healthy(self) -> bool:
        url = self.health_url.replace(
            ":8222/", f":{self.http_port}/"
        )  # compose's monitoring port, made local
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False


class ComposeTopology:
    """compose.yaml's stocksync stack on this machine; ``base`` is the API port all API processes share."""

    def __init__(self, root: Path, database_url: str, **settings: str) -> None:
        self.root = root
        self.services = compose_services()
        self.http_port = free_port()
        self.nodes = [
            NatsNode(name, words(service["command"]), _health_url(service), root / "nats")
            for name, service in self.services.items()
            if str(service.get("image", "")).startswith("nats:")
        ]
        self.env = compose_env(self.services["migrate"]) | {
            "STOCKSYNC_DATABASE_URL": database_url,
            "STOCKSYNC_NATS_URL": ",".join(node.url for node in self.nodes),
            "STOCKSYNC_HTTP_HOST": "127.0.0.1",
            "STOCKSYNC_HTTP_PORT": str(self.http_port),
            "STOCKSYNC_HOME": str(root / ".stocksync"),
        }
        self.env |= {f"STOCKSYNC_{name.upper()}": value for name, value in settings.items()}
        self.processes: dict[str, list[ServiceProcess]] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return self.env["STOCKSYNC_NATS_URL"]

    def start(self) -> None:
        self._write_nats_config()
        self.start_nats()
        self._run(words(self.services["migrate"]["command"]))
        for name, service in self.services.items():
            command = words(service.get("command", []))
            if command[:2] != ["stocksync", "serve"] or service.get("profiles"):
                continue
            replicas = (service.get("deploy") or {}).get("replicas", 1)
            self.processes[name] = [self._serve(name, n, command) for n in range(1, replicas + 1)]
        for name, replicas in self.processes.items():
            for process in replicas:
                self._until_healthy(name, process)

    def stop(self) -> None:
        running = [p.process for replicas in self.processes.values() for p in replicas if p.alive]
        for process in running:  # all at once, then wait for each: they stop in parallel
            process.terminate()
        for process in running:
            terminate(process)
        self.stop_nats()

    def until_logged(self, name: str, text: str, timeout: float = 60) -> None:
        """Until every process of service ``name`` has logged ``text``."""
        deadline = time.monotonic() + timeout
        for process in self.processes[name]:
            while text not in process.current_log():
                assert process.alive and time.monotonic() < deadline, f"no {text}:\n{process.log_tail()}"
                time.sleep(0.1)

    def api_metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.env['STOCKSYNC_METRICS_PORT']}/metrics" for p in self.processes["api"]]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_tail()}" for replicas in self.processes.values() for p in replicas
        )

    # --- NATS ----------------------------------------------------------------------------------------------

    def _write_nats_config(self) -> None:
        """As the nats-config service: its `stocksync ...` command, the output into the nodes' config file."""
        script = words(self.services["nats-config"]["command"])[-1]  # sh -c "stocksync nats config > FILE"
        command, _, _ = script.partition(">")
        config = self.root / "nats" / "stocksync.conf"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(self._run(shlex.split(command)).stdout)

    def start_nats(self, timeout: float = 90) -> None:
        config = self.root / "nats" / "stocksync.conf"
        cluster_ports = {node.name: node.cluster_port for node in self.nodes}
        for node in self.nodes:
            log = (self.root / "nats" / f"{node.name}.log").open("ab")
            node.process = subprocess.Popen(
                node.local_command(config, cluster_ports), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            log.close()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not node.healthy():
                assert node.process.poll() is None, (self.root / "nats" / f"{node.name}.log").read_text()
                assert time.monotonic() < deadline, f"{node.name} not healthy in {timeout}s"
                time.sleep(0.1)

    def stop_nats(self) -> None:
        for node in self.nodes:
            terminate(node.process)

    @contextmanager
    def nats_down(self) -> Iterator[None]:
        """Every node stopped (the stores kept), then started again and healthy."""
        self.stop_nats()
        try:
            yield
        finally:
            self.start_nats()

    # --- stocksync -----------------------------------------------------------------------------------------

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            cli(*command), env=self._process_env(), capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        return done

    def _process_env(self, **more: str) -> dict[str, str]:
        return service_env() | self.env | more  # the suite's clean environment (no STOCKSYNC_ of the caller)

    def _serve(self, name: str, replica: int, command: list[str]) -> ServiceProcess:
        roles = [command[i + 1] for i, word in enumerate(command) if word == "--role"]
        process = ServiceProcess(roles, "", "", self.root / f"{name}-{replica}.log")
        process.env = self._process_env(STOCKSYNC_METRICS_PORT=str(free_port()))
        return process.start()

    def _until_healthy(self, name: str, process: ServiceProcess, timeout: float = 120) -> None:
        """The service's healthcheck command (compose's), with this process's environment, until it passes."""
        test = words(self.services[name]["healthcheck"]["test"])
        assert test[0] == "CMD", test
        deadline = time.monotonic() + timeout
        while True:
            assert process.alive, process.log_tail()
            checked = subprocess.run(
                cli(*test[1:]), env=process.env, capture_output=True, text=True, timeout=60, check=False
            )
            if checked.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{name} not healthy: {checked.stderr}\n{process.log_tail()}"
            time.sleep(0.5)


def _health_url(service: Service) -> str:
    (url,) = [word for word in words(service["healthcheck"]["test"]) if word.startswith("http://")]
    return url
