"""`scripts/bench --quick` runs end to end and its numbers are consistent. No timing is asserted: these machines
are shared and noisy, and the bench exists to measure, not to pass or fail on speed.

The bench is run as a subprocess (`python -m benchmarks`, the entry `scripts/bench` execs) with its report, plot and
JSON written to the test's temporary directory, so the committed docs/benchmarks.md is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scenarios.mixed import BURST, PROBE

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--report",
            str(out / "benchmarks.md"),
            "--plot",
            str(out / "latency.png"),
            "--json",
            str(out / "bench.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert (out / "bench.json").exists(), (
        f"the bench wrote no results:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    results = json.loads((out / "bench.json").read_text())
    results["_exit"] = done.returncode
    results["_stdout"] = done.stdout
    results["_report"] = (out / "benchmarks.md").read_text()
    return results


def test_every_event_published_is_recorded_once(bench: dict) -> None:
    assert bench["scenarios"], bench["_stdout"][-3000:]
    for name, scenario in bench["scenarios"].items():
        published = scenario["publisher"]
        intended = published["duplicates_with_msg_id"] + published["duplicates_without_msg_id"]
        assert published["messages"] - intended == published["unique"], name
        assert scenario["ledger"]["recorded"] == published["unique"], (name, scenario["ledger"], published)
        assert published["acks"]["error"] == 0, name
        # STOCKSYNC_IN de-duplicates for 100 ms only: the ledger answers the repeats it lets through.
        assert published["acks"]["duplicate"] <= published["duplicates_with_msg_id"], name


def test_nothing_is_dead_lettered_or_left_pending(bench: dict) -> None:
    for name, scenario in bench["scenarios"].items():
        state = scenario["end_state"]
        assert state["STOCKSYNC_DLQ"] == 0, (name, state)
        assert state["settled"], (name, state)
        assert state["pending"] == 0, (name, state)
        if scenario.get("relay", True):  # the naive baseline runs without the relay
            assert state["unrelayed"] == 0, (name, state)


def test_latency_runs_saw_every_outcome(bench: dict) -> None:
    runs = {k: v for k, v in bench["scenarios"].items() if "latency" in k}
    assert runs
    for name, scenario in runs.items():
        assert scenario["publisher"]["unique"] > 0, name
        assert scenario["outcomes_matched"] == scenario["publisher"]["unique"], name
    assert [point["offered"] for point in bench["sweep"]] == bench["plan"]["sweep_rates"]


def test_the_sweep_says_how_busy_the_cores_were_at_each_rate(bench: dict) -> None:
    """The knee is where the cores fill: each rate's pipeline CPU, over the run's wall time and per event."""
    for point in bench["sweep"]:
        assert 0 < point["cores"] <= int(bench["machine"]["nproc"]) + 0.5, point
        assert point["cpu_per_event"] > 0, point
    assert "| pipeline cores busy | pipeline CPU µs/event |" in bench["_report"]


def test_the_probe_after_a_burst_times_every_event_to_its_own_availability_message(bench: dict) -> None:
    burst, probe = (bench["scenarios"][key] for key in (BURST, PROBE))
    assert burst["ledger"]["recorded"] == bench["plan"]["burst_events"]
    assert probe["availability_timed"] == probe["publisher"]["unique"] > 0
    assert 0 < probe["availability_latency_ms"]["p50"] <= probe["availability_latency_ms"]["p99"]
    assert all(point["availability_timed"] > 0 for point in bench["sweep"])  # the sweep's lone positions
    for figure in ("latency sweep's knee", f"{PROBE} (", "**Right after a burst**"):
        assert figure in bench["_report"], figure


def test_the_bench_reports_every_figure(bench: dict) -> None:
    assert bench["_exit"] == 0, [c for c in bench["checks"] if not c["ok"]]
    assert all(check["ok"] for check in bench["checks"]), [c for c in bench["checks"] if not c["ok"]]
    assert bench["pgbench"]["tps"] > 0
    for name in ("mixed", "naive mixed", "raw asyncpg mixed", "hot sku", "naive hot sku"):
        assert bench["scenarios"][name]["ledger"]["sustained_per_s"] > 0, name
    report = bench["_report"]
    for heading in (
        "## Targets and figures",
        "## Event throughput over NATS",
        "## Latency",
        "## HTTP",
        "## Memory",
        "## Reconciliation",
        "## Baselines",
        "## Profiling",
    ):
        assert heading in report, heading
