"""The shipped alert rules, Prometheus config and Grafana dashboard are valid for Prometheus itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.support_monitoring import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS,
    alert_expressions,
    dashboard_expressions,
    promtool,
    queried_metrics,
)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", *args], capture_output=True, text=True, timeout=60)


def test_the_alert_rules_pass_promtool() -> None:
    done = check("rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_expressions())} rules found" in done.stdout


def test_the_prometheus_config_and_its_rule_files_pass_promtool() -> None:
    done = check("config", str(PROMETHEUS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The check can fail: an expression that is not PromQL."""
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(("}]}]}))
    assert check("rules", str(broken)).returncode != 0


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no check for a bare expression: each becomes a recording rule it parses."""
    expressions = dashboard_expressions().values()
    rules = [{"record": f"dashboard:panel_{n}", "expr": expr} for n, expr in enumerate(expressions)]
    recorded = tmp_path / "dashboard.yml"
    recorded.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = check("rules", str(recorded))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_grafana_json_on_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "stocksync" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["type"] == "prometheus" and panel["targets"], panel["title"]


def test_rules_and_dashboard_cover_what_issue_12_asks_to_see() -> None:
    wanted = {
        "stocksync_http_requests_total",
        "stocksync_http_request_duration_seconds_bucket",
        "stocksync_events_total",
        "stocksync_batch_size_sum",
        "stocksync_transaction_seconds_bucket",
        "stocksync_dead_letters_total",
        "stocksync_outbox_unrelayed",
        "stocksync_outbox_oldest_unrelayed_seconds",
        "stocksync_consumer_pending",
        "stocksync_consumer_ack_pending",
        "stocksync_reservations",
        "stocksync_reservations_expiring",
        "stocksync_relay_leading",
    }
    assert wanted <= queried_metrics()
