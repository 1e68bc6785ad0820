"""The scenarios, in order, and the command line (``scripts/bench [--quick]``, ``python -m benchmarks``).

Every figure is measured in this run on this machine, next to the baselines it is compared with. Applied
events are counted from the ledger (``processed_events`` rows, one per distinct event recorded, whatever its
outcome), never from the publisher.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import infra as inf
from benchmarks.infra import Infra, fetchval
from benchmarks.plan import Bench, Plan
from benchmarks.results import Results, say
from benchmarks.scenarios import hot, http, mixed, naive, orders, pgbench, profiled, reconcile, scale
from benchmarks.template import seed_template

# in this order; ``--only`` picks them by name (every naive baseline is "naive"); ``--profile`` adds profiled.run
SCENARIOS = (
    ("pgbench", pgbench.run),
    ("mixed", mixed.run),
    ("naive", naive.run_mixed),
    ("naive", naive.run_mixed_sql),
    ("scale", scale.run),
    ("hot", hot.run),
    ("naive", naive.run_hot),
    ("http", http.run),
    ("orders", orders.run),  # after http: set against the reservations it measured
    ("reconcile", reconcile.run),
)
NAMES = ",".join(dict.fromkeys(name for name, _ in SCENARIOS))


async def run_all(
    plan: Plan, args: argparse.Namespace, results: Results, infra: Infra, log_dir: Path
) -> None:
    say(
        f"stocksync bench ({'quick' if plan.quick else 'full'}): PostgreSQL {infra.admin_url}, NATS {infra.nats_url}"
    )
    results.software["postgresql"] = await fetchval(infra.admin_url, "SELECT version()")
    stock_file, keys = await seed_template(infra, plan, results, log_dir)
    bench = Bench(plan, results, infra, log_dir, stock_file, keys, args.profile)
    for name, scenario in SCENARIOS:
        if name in args.only:
            await scenario(bench)
    if args.profile:
        await profiled.run(bench)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.only = set(args.only.split(","))
    from stocksync.logs import configure_logging

    configure_logging("console", "warning")  # the seeding goes through LedgerService, which logs every batch
    plan = _plan(args)
    results = _results(plan, args, argv)
    started = time.perf_counter()
    infra = Infra.start(args.postgres_url, keep=args.keep)
    log_dir = infra.workdir / "logs"
    log_dir.mkdir()
    failed = False
    try:
        asyncio.run(run_all(plan, args, results, infra, log_dir))
    except BaseException as error:
        failed = True
        say(
            f"bench failed: {type(error).__name__}: {error} (logs in {log_dir}{'' if args.keep else ', removed'})"
        )
        raise
    finally:
        results.seconds = round(time.perf_counter() - started, 1)
        results.machine["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        results.software["nats-server"] = _nats_version()
        if not failed:
            _write_outputs(results, args)
        infra.close()
    return 0 if all(c["ok"] for c in results.checks) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run with small numbers")
    parser.add_argument("--report", default=None, help="markdown report (default docs/benchmarks.md)")
    parser.add_argument("--plot", default=None, help="latency plot PNG (default docs/benchmarks-latency.png)")
    parser.add_argument("--json", default=None, help="also write every figure as JSON here")
    parser.add_argument(
        "--postgres-url", default=None, help="use this PostgreSQL server instead of an embedded one"
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="also profile the worker and relay with py-spy during an extra mixed run",
    )
    parser.add_argument("--only", default=NAMES, help=f"comma-separated subset of: {NAMES}")
    parser.add_argument("--events", type=int, default=None, help="override the mixed event count")
    parser.add_argument(
        "--api-processes", type=int, default=None, help="API processes sharing the port (default 1)"
    )
    parser.add_argument(
        "--rates", default=None, help="override the latency sweep's offered rates (comma-separated events/s)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (logs, servers' data)"
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a line for the report (e.g. the machine was busy)"
    )
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    """The mode's plan with the command line's overrides."""
    plan = Plan.for_mode(args.quick)
    if args.events:
        plan.mixed_events = args.events
    if args.api_processes:
        plan.api_processes = args.api_processes
    if args.rates:
        plan.sweep_rates = [int(rate) for rate in args.rates.split(",")]
    return plan


def _results(plan: Plan, args: argparse.Namespace, argv: list[str] | None) -> Results:
    command = "scripts/bench" + ("".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
    results = Results(
        started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        plan=asdict(plan),
        machine=inf.machine(),
    )
    results.notes.extend(args.note)
    return results


def _write_outputs(results: Results, args: argparse.Namespace) -> None:
    from benchmarks.report import write_outputs

    write_outputs(
        results,
        report=Path(args.report or inf.REPO / "docs" / "benchmarks.md"),
        plot_path=Path(args.plot or inf.REPO / "docs" / "benchmarks-latency.png"),
        json_path=Path(args.json) if args.json else None,
    )


def _nats_version() -> str:
    from stocksync.embedded.nats import nats_server_binary

    try:
        return subprocess.run(
            [str(nats_server_binary()), "--version"], capture_output=True, text=True
        ).stdout.strip()
    except Exception:
        return "unknown"
