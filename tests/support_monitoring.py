"""The shipped monitoring: the alert rules, the Prometheus config and the Grafana dashboard, and the metric
names their queries use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "docs" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "stocksync.json"
_METRIC = re.compile(r"\bstocksync_[a-z0-9_]+")


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{p['title']} {t['refId']}": t["expr"] for p in panels for t in p["targets"]}


def queried_metrics() -> set[str]:
    """Every stocksync series name the rules and the dashboard query (``_bucket`` and ``_total`` included)."""
    expressions = [*alert_expressions().values(), *dashboard_expressions().values()]
    return {name for expr in expressions for name in _METRIC.findall(expr)}


def promtool() -> str:
    """promtool, from Debian's ``prometheus`` package, installed when missing (the tests run as root)."""
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
        subprocess.run(["apt-get", "install", "-y", "prometheus"], **quiet)
        if shutil.which("promtool") is None:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "prometheus"], **quiet)
        found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus"
    return found
