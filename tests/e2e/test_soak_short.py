"""The fault campaign, short form (issue 15; `scripts/soak --minutes N` is the long one): every fault kind at
least once under mixed HTTP and NATS traffic, then every accepted event has exactly one outcome, none is lost or
applied twice, the ledger equals the model, and `stocksync reconcile` is clean. Outcomes only, never timings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.soak import FAULT_KINDS, SoakConfig, render, run_campaign


@pytest.mark.slow
async def test_a_short_fault_campaign_loses_nothing_doubles_nothing_and_matches_the_model() -> None:
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as its own system user, which
    # must reach its data directory to stop and start again (pytest's root directory is 0700).
    workdir = Path(tempfile.mkdtemp(prefix="stocksync-soak-"))
    os.chmod(workdir, 0o755)
    try:
        report = await run_campaign(SoakConfig(minutes=1.5, workdir=workdir, seed=42, settle_s=300))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))

    assert report["settled"], render(report)
    assert all(report["faults"][kind] >= 1 for kind in FAULT_KINDS), report["faults"]
    assert report["events"] > 0 and report["duplicates_sent"] > 0 and report["conflicts_sent"] > 0
    assert report["lost"] == 0, report["samples"]
    assert report["doubled"] == 0, report["samples"]
    assert report["outcomes_recorded_more_than_once"] == 0
    assert report["wrong_outcomes"] == 0, report["samples"]
    assert report["positions_unlike_model"] == 0, report["samples"]
    assert report["invariant_violations"] == 0
    assert report["reservations_in_wrong_status"] == 0
    assert report["dead_letters"] == 0
    assert report["http"]["5xx"] == 0, report["http_5xx_causes"]
    assert not any(report["misanswered"].values()), report["misanswered"]
    assert report["service_crashes"] == {}
    assert report["reconcile_exit"] == 0, report["reconcile_output"]
