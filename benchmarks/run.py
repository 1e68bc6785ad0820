"""The scenarios, in order, and the command line (``scripts/bench [--quick]``, ``python -m benchmarks``).

Every figure is measured in this run on this machine, next to the baselines it is compared with. Applied
events are counted from the ledger (``processed_events`` rows, one per distinct event recorded, whatever its
outcome), never from the publisher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import infra as inf
from benchmarks.infra import (
    Infra,
    ProcessSampler,
    Service,
    fetch,
    fetchval,
    fixed,
    reset_nats,
    stream_counts,
    tree,
    wait_for_log,
)
from benchmarks.workload import WorkloadSpec, initial_stock, locations, seed_receipts, sku_ids

TEMPLATE = "bench_template"


@dataclass
class Plan:
    quick: bool
    stores: int
    skus: int
    mixed_events: int
    naive_events: int
    hot_events: int
    naive_hot_events: int
    sweep_rates: list[int]
    sweep_seconds: float
    hot_latency_rate: int
    hot_latency_seconds: float
    pgbench_scale: int
    pgbench_seconds: int
    http_seconds: float
    http_concurrency: int
    reservation_rate: int
    availability_rate: int
    recon_positions: int
    recon_movements: int
    naive_concurrency: int = 4
    # API processes sharing the port (SO_REUSEPORT). One: on 2 cores that also run PostgreSQL and the load
    # generator, a second gave no more availability reads and fewer, slower reservations (smaller groups).
    api_processes: int = 1

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                stores=6,
                skus=1_000,
                mixed_events=20_000,
                naive_events=1_500,
                hot_events=8_000,
                naive_hot_events=1_000,
                sweep_rates=[1_000, 3_000],
                sweep_seconds=4,
                hot_latency_rate=1_000,
                hot_latency_seconds=3,
                pgbench_scale=4,
                pgbench_seconds=5,
                http_seconds=3,
                http_concurrency=16,
                reservation_rate=1_000,
                availability_rate=3_000,
                recon_positions=10_000,
                recon_movements=100_000,
            )
        return cls(
            quick=False,
            stores=20,
            skus=5_000,
            mixed_events=150_000,
            naive_events=6_000,
            hot_events=60_000,
            naive_hot_events=4_000,
            sweep_rates=[250, 500, 1_000, 2_000, 4_000, 8_000],
            sweep_seconds=10,
            hot_latency_rate=1_000,
            hot_latency_seconds=10,
            pgbench_scale=10,
            pgbench_seconds=20,
            http_seconds=10,
            http_concurrency=16,
            reservation_rate=1_000,
            availability_rate=3_000,
            recon_positions=100_000,
            recon_movements=1_000_000,
        )

    def spec(self, **overrides) -> WorkloadSpec:
        return replace(WorkloadSpec(stores=self.stores, skus=self.skus), **overrides)


@dataclass
class Results:
    started_at: str
    command: str
    plan: dict
    machine: dict
    software: dict = field(default_factory=dict)
    seed: dict = field(default_factory=dict)
    pgbench: dict | None = None
    scenarios: dict[str, dict] = field(default_factory=dict)
    sweep: list[dict] = field(default_factory=list)
    http: dict[str, dict] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    reconcile: dict | None = None
    profile: dict | None = None
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"  check {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


# --- set-up ---------------------------------------------------------------------------------------------------


def template_stock(plan: Plan) -> dict[tuple[str, str], int]:
    """Enough for every scenario that shares a clone: mixed (+ the latency sweep) and hot (+ its latency run)."""
    sweep_events = sum(int(rate * plan.sweep_seconds) for rate in plan.sweep_rates)
    mixed = initial_stock(plan.spec(events=plan.mixed_events + sweep_events))
    hot = initial_stock(
        plan.spec(events=plan.hot_events + int(plan.hot_latency_rate * plan.hot_latency_seconds), hot=True)
    )
    return {key: max(mixed.get(key, 0), hot.get(key, 0)) for key in mixed.keys() | hot.keys()}


async def build_template(infra: Infra, plan: Plan, stock: dict) -> dict:
    """Schema, locations, stock (receipts through the product's LedgerService) and API keys, in a template database."""
    import msgspec

    from stocksync.adapters.database import create_engine
    from stocksync.domain.events import decode_inbound
    from stocksync.domain.model import Location
    from stocksync.migrate import migrate_database_async
    from stocksync.service.ledger_service import LedgerService
    from stocksync.adapters.locations import upsert_locations

    started = time.perf_counter()
    url = await infra.create_database(TEMPLATE)
    await migrate_database_async(url)
    engine = create_engine(url, pool_size=2)
    keys = {}
    try:
        spec = plan.spec()
        await upsert_locations(engine, [Location(**asdict(loc)) for loc in locations(spec)])
        receipts = [decode_inbound(msgspec.json.encode(r)) for r in seed_receipts(spec, stock)]
        ledger = LedgerService(engine)
        for start in range(0, len(receipts), 20):
            await ledger.apply(receipts[start : start + 20])
        try:
            from stocksync.service.keys import create_key

            keys = {
                "ecommerce": await create_key(engine, "ecommerce", (), "bench web shop"),
                "admin": await create_key(engine, "admin", (), "bench admin"),
            }
        except ImportError:
            keys = {}
    finally:
        await engine.dispose()
    positions = await fetchval(url, "SELECT count(*) FROM positions")
    return {
        "positions": positions,
        "units": sum(stock.values()),
        "receipts": len(receipts),
        "seconds": round(time.perf_counter() - started, 1),
        "keys": keys,
    }


# --- the NATS scenarios ------------------------------------------------------------------------------------------


async def ledger_rate(url: str, prefix: str, wall_start: float, wall_end: float) -> dict:
    """Applied events/s from the ledger: the middle 80% of the recorded events over the time they took."""
    like = prefix + ":%"
    row = (
        await fetch(
            url,
            """
        SELECT count(*) AS n,
               count(*) FILTER (WHERE outcome = 'applied') AS applied,
               count(*) FILTER (WHERE outcome = 'rejected') AS rejected,
               extract(epoch FROM min(recorded_at)) AS t_first,
               extract(epoch FROM max(recorded_at)) AS t_last,
               extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY recorded_at)) AS t10,
               extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY recorded_at)) AS t90,
               count(*) FILTER (WHERE recorded_at <= to_timestamp($2)) AS during
        FROM processed_events WHERE event_id LIKE $1
        """,
            like,
            wall_end,
        )
    )[0]
    errors = await fetch(
        url,
        "SELECT error, count(*) AS n FROM processed_events WHERE event_id LIKE $1 AND error IS NOT NULL"
        " GROUP BY error ORDER BY n DESC",
        like,
    )
    movements = await fetchval(url, "SELECT count(*) FROM movements WHERE event_id LIKE $1", like)
    outbox = (
        await fetch(
            url,
            """
        SELECT count(*) AS n, extract(epoch FROM min(created_at)) AS t_first,
               extract(epoch FROM max(relayed_at)) AS t_relayed
        FROM outbox WHERE created_at >= to_timestamp($1)
        """,
            wall_start,
        )
    )[0]
    n = row["n"]
    t10, t90 = float(row["t10"] or 0), float(row["t90"] or 0)
    t_first, t_last = float(row["t_first"] or 0), float(row["t_last"] or 0)
    sustained = (0.8 * n) / (t90 - t10) if t90 > t10 else float("nan")
    during_span = wall_end - max(wall_start, t_first)
    return {
        "recorded": n,
        "applied": row["applied"],
        "rejected": row["rejected"],
        "movements": movements,
        "errors": {r["error"]: r["n"] for r in errors},
        "sustained_per_s": sustained,
        "overall_per_s": n / (t_last - t_first) if t_last > t_first else float("nan"),
        "while_publishing_per_s": row["during"] / during_span if during_span > 0.5 else float("nan"),
        "first_to_last_s": t_last - t_first,
        # the relay: outbox rows published (availability, outcomes, reservations, alerts) and how far behind it was
        "outbox_rows": outbox["n"],
        "relayed_per_s": (
            outbox["n"] / (float(outbox["t_relayed"]) - float(outbox["t_first"]))
            if outbox["t_relayed"] and outbox["t_first"] and outbox["t_relayed"] > outbox["t_first"]
            else float("nan")
        ),
        "relay_lag_at_end_s": float(outbox["t_relayed"]) - t_last if outbox["t_relayed"] else float("nan"),
        "visible_per_s": (
            n / (float(outbox["t_relayed"]) - t_first)
            if outbox["t_relayed"] and float(outbox["t_relayed"]) > t_first
            else float("nan")
        ),
    }


async def settle(
    url: str, nats_url: str, prefix: str, expected: int, timeout: float, relayed: bool = True
) -> dict:
    """Until the ledger holds every distinct event, the consumer has nothing pending and (with a relay running)
    the outbox is relayed."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        recorded = await fetchval(
            url, "SELECT count(*) FROM processed_events WHERE event_id LIKE $1", prefix + ":%"
        )
        unrelayed = await fetchval(url, "SELECT count(*) FROM outbox WHERE relayed_at IS NULL")
        streams = await stream_counts(nats_url)
        state = {"recorded": recorded, "unrelayed": unrelayed, **streams}
        if recorded >= expected and (unrelayed == 0 or not relayed) and streams["pending"] == 0:
            return state | {"settled": True}
        await asyncio.sleep(0.25)
    return state | {"settled": False}


async def prepare_messages(spec: WorkloadSpec, stock_file: Path, log_dir: Path) -> Path:
    """The workload's messages, generated here (before any clock starts) for the publisher to load."""
    from benchmarks.publisher import save_messages
    from benchmarks.workload import generate

    stock = {tuple(k.split("|", 1)): v for k, v in json.loads(stock_file.read_text()).items()}
    messages_file = log_dir / f"messages-{spec.prefix}.msgpack"
    save_messages(await asyncio.to_thread(generate, spec, stock), messages_file)
    return messages_file


async def publish(
    infra: Infra,
    spec: WorkloadSpec,
    messages_file: Path,
    log_dir: Path,
    *,
    rate: float = 0,
    latency: bool = False,
    wait: float = 60,
) -> dict:
    out = log_dir / f"publisher-{spec.prefix}.json"
    args = [
        sys.executable,
        "-m",
        "benchmarks.publisher",
        "--spec",
        spec.to_json(),
        "--nats",
        infra.nats_url,
        "--out",
        str(out),
        "--messages",
        str(messages_file),
        "--rate",
        str(rate),
        "--wait",
        str(wait),
    ]
    if latency:
        args.append("--latency")
    with (log_dir / f"publisher-{spec.prefix}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *args, env={**os.environ, "PYTHONPATH": inf.python_path()}, cwd=inf.REPO, stdout=log, stderr=log
        )
        code = await process.wait()
    if code != 0:
        raise RuntimeError(
            f"the publisher failed ({code}): {(log_dir / f'publisher-{spec.prefix}.log').read_text()[-2000:]}"
        )
    return json.loads(out.read_text())


class Group:
    """One cloned database, a clean NATS topology, and the applier (plus the relay) running against them.

    The naive baseline runs without the relay: each of its one-event transactions would wake the relay for a pass
    of its own, and that cost (a product property, but not the one being compared) would lower the baseline and
    flatter the ratio. Without it the baseline is as fast as one transaction per event can be here.
    """

    def __init__(
        self, infra: Infra, name: str, log_dir: Path, applier: str, concurrency: int = 4, relay: bool = True
    ) -> None:
        self.infra, self.name, self.log_dir, self.applier, self.concurrency = (
            infra,
            name,
            log_dir,
            applier,
            concurrency,
        )
        self.relay = relay
        self.services: list[Service] = []
        self.url = ""

    async def __aenter__(self) -> Group:
        self.url = await self.infra.create_database(f"bench_{self.name}", template=TEMPLATE)
        await reset_nats(self.infra.nats_url)
        relay = Service.serve(
            ["relay"], self.url, self.infra.nats_url, self.log_dir, name=f"{self.name}-relay"
        )
        if self.applier == "worker":
            applier = Service.serve(
                ["worker"], self.url, self.infra.nats_url, self.log_dir, name=f"{self.name}-worker"
            )
        else:
            applier = Service(
                f"{self.name}-naive",
                [
                    "-m",
                    "benchmarks.naive",
                    "--database",
                    self.url,
                    "--nats",
                    self.infra.nats_url,
                    "--concurrency",
                    str(self.concurrency),
                ],
                {},
                self.log_dir,
            )
        self.services = [applier.start(), *([relay.start()] if self.relay else [])]
        for service in self.services:
            await wait_for_log(service, "serving")
        await asyncio.sleep(0.5)  # the relay takes the lead, the worker binds its pull subscription
        return self

    def sampler(self) -> ProcessSampler:
        infra = self.infra
        return ProcessSampler(
            {
                "worker": fixed(self.applier_service.pid),
                "relay": fixed(self.relay_service.pid if self.relay_service else None),
                "postgres": tree(infra.postgres_pid),
                "nats-server": fixed(infra.nats_pid),
                "bench": fixed(os.getpid()),
            }
        )

    @property
    def applier_service(self) -> Service:
        return self.services[0]

    @property
    def relay_service(self) -> Service | None:
        return self.services[1] if len(self.services) > 1 else None

    async def __aexit__(self, *exc) -> None:
        for service in self.services:
            await asyncio.to_thread(service.stop)
        await self.infra.drop_database(f"bench_{self.name}")


async def throughput(
    group: Group,
    results: Results,
    key: str,
    spec: WorkloadSpec,
    stock_file: Path,
    timeout: float,
    memory: bool = False,
    profile_s: float = 0,
) -> dict:
    say(
        f"- {key}: {spec.events:,} events{' (one hot sku)' if spec.hot else ''}, published as fast as possible, "
        f"applied by the {group.applier}"
    )
    messages = await prepare_messages(spec, stock_file, group.log_dir)
    sampler = group.sampler()
    profiler = start_profiler(group, results, profile_s) if profile_s else None
    with sampler:
        published = await publish(group.infra, spec, messages, group.log_dir)
        state = await settle(
            group.url, group.infra.nats_url, spec.prefix, published["unique"], timeout, relayed=group.relay
        )
    if profiler is not None:
        await finish_profiler(profiler, results)
    rate = await ledger_rate(group.url, spec.prefix, published["wall_start"], published["wall_end"])
    scenario = {
        "spec": asdict(spec),
        "applier": group.applier,
        "relay": group.relay,
        "publisher": _publisher_summary(published),
        "ledger": rate,
        "end_state": state,
        "memory_mb": sampler.peak_mb(),
        "cpu_seconds": {**sampler.cpu_seconds(), "publisher": round(published["cpu_seconds"], 2)},
    }
    scenario["cpu_seconds"]["other processes"] = round(
        max(0.0, scenario["cpu_seconds"]["other processes"] - published["cpu_seconds"]), 2
    )
    results.scenarios[key] = scenario
    if memory:
        results.memory.update(
            {
                f"{group.applier} (peak, {key})": sampler.peak_mb()["worker"],
                f"relay (peak, {key})": sampler.peak_mb()["relay"],
            }
        )
    say(
        f"  {rate['sustained_per_s']:,.0f} applied/s sustained (ledger), "
        f"publisher {published['publish_rate']:,.0f} msg/s, worker peak RSS {sampler.peak_mb()['worker']} MB"
    )
    _consistency(results, key, published, state, {**rate, "relay": group.relay})
    return scenario


async def latency_run(
    group: Group,
    results: Results,
    key: str,
    spec: WorkloadSpec,
    stock_file: Path,
    rate: float,
    timeout: float,
) -> dict:
    say(f"- {key}: {spec.events:,} events at {rate:,.0f}/s offered{' (one hot sku)' if spec.hot else ''}")
    messages = await prepare_messages(spec, stock_file, group.log_dir)
    published = await publish(
        group.infra, spec, messages, group.log_dir, rate=rate, latency=True, wait=timeout
    )
    state = await settle(group.url, group.infra.nats_url, spec.prefix, published["unique"], timeout)
    ledger = await ledger_rate(group.url, spec.prefix, published["wall_start"], published["wall_end"])
    lat = published["latency_ms"]
    stages = await stage_breakdown(group.url, published.get("traces", []))
    say(
        f"  publish-to-visible p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms "
        f"(reached {published['publish_rate']:,.0f}/s; "
        f"{published['outcomes_matched']:,}/{published['unique']:,} outcomes)"
    )
    scenario = {
        "spec": asdict(spec),
        "offered_rate": rate,
        "publisher": _publisher_summary(published),
        "latency_ms": lat,
        "stages_ms": stages,
        "outcomes_matched": published["outcomes_matched"],
        "ledger": ledger,
        "end_state": state,
    }
    results.scenarios[key] = scenario
    _consistency(results, key, published, state, ledger)
    results.check(
        f"{key}: every event's outcome seen",
        published["outcomes_matched"] == published["unique"],
        f"{published['outcomes_matched']:,} of {published['unique']:,}",
    )
    return scenario


async def stage_breakdown(url: str, traces: list) -> dict:
    """Where a sample of the events spent their time: publish -> the start of the transaction that applied it
    (``processed_events.recorded_at``: stream, fetch, waiting for the batch before it) -> its outcome marked
    relayed (``outbox.relayed_at``: the transaction, its commit, the relay's pass up to the acknowledgements)
    -> the outcome's arrival (the delivery; the publisher may see it before the relay has its ack)."""
    from benchmarks.publisher import percentiles

    if not traces:
        return {}
    ids = [t[0] for t in traces]
    rows = await fetch(
        url,
        "SELECT event_id, outcome, extract(epoch FROM recorded_at) AS t FROM processed_events"
        " WHERE event_id = ANY($1::text[])",
        ids,
    )
    recorded = {r["event_id"]: float(r["t"]) for r in rows}
    outcome_ids = [f"outcome:{r['event_id']}:{r['outcome']}" for r in rows]
    marks = await fetch(
        url,
        "SELECT msg_id, extract(epoch FROM relayed_at) AS t FROM outbox WHERE msg_id = ANY($1::text[])",
        outcome_ids,
    )
    relayed = {r["msg_id"].removeprefix("outcome:").rsplit(":", 1)[0]: float(r["t"]) for r in marks}
    sample = [(e, p, v) for e, p, v in traces if e in recorded and e in relayed]
    return {
        "samples": len(sample),
        "publish_to_transaction": percentiles([(recorded[e] - p) * 1000 for e, p, _ in sample]),
        "transaction_to_relayed": percentiles([(relayed[e] - recorded[e]) * 1000 for e, _, _ in sample]),
        "relayed_to_visible": percentiles([(v - relayed[e]) * 1000 for e, _, v in sample]),
        "transaction_to_visible": percentiles([(v - recorded[e]) * 1000 for e, _, v in sample]),
    }


def _publisher_summary(published: dict) -> dict:
    return {
        k: published[k]
        for k in (
            "messages",
            "unique",
            "duplicates_with_msg_id",
            "duplicates_without_msg_id",
            "acks",
            "publish_seconds",
            "publish_rate",
            "offered_rate",
        )
    }


def _consistency(results: Results, key: str, published: dict, state: dict, rate: dict) -> None:
    results.check(
        f"{key}: applied == published - intended duplicates",
        rate["recorded"] == published["unique"],
        f"ledger {rate['recorded']:,}, published {published['messages']:,} "
        f"- {published['messages'] - published['unique']:,} duplicates = {published['unique']:,}",
    )
    results.check(  # STOCKSYNC_IN de-duplicates for 100 ms only: the ledger answers the other repeats
        f"{key}: JetStream dropped no more than the duplicates that carried Nats-Msg-Id",
        published["acks"]["duplicate"] <= published["duplicates_with_msg_id"]
        and published["acks"]["error"] == 0,
        f"acks {published['acks']}",
    )
    results.check(
        f"{key}: nothing in the DLQ",
        state.get("STOCKSYNC_DLQ", -1) == 0,
        f"{state.get('STOCKSYNC_DLQ')} dead letters",
    )
    results.check(
        f"{key}: settled (nothing pending{', outbox relayed' if rate.get('relay', True) else ''})",
        bool(state.get("settled")),
        json.dumps(state),
    )


# --- profiling ---------------------------------------------------------------------------------------------------


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def _profile_pids(pids: dict[str, int], log_dir: Path, tag: str, seconds: float):
    """py-spy record (100 Hz, raw collapsed stacks) on each process for ``seconds``; None without py-spy."""
    spy = _py_spy()
    if spy is None:
        return None
    running = []
    for role, pid in pids.items():
        out = log_dir / f"profile-{tag}-{role}.txt"
        process = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running.append((role, process, out, seconds))
    return running


async def _finish_profile(running, suffix: str = "") -> dict:
    from benchmarks.profile import summarize

    found = {}
    for role, process, out, seconds in running:
        await asyncio.to_thread(process.wait)
        if out.exists():
            found[f"{role}{suffix}"] = {**summarize(out), "seconds": seconds}
    return found


def start_profiler(group: Group, results: Results, seconds: float):
    pids = {"worker": group.applier_service.pid}
    if group.relay_service is not None:
        pids["relay"] = group.relay_service.pid
    running = _profile_pids(pids, group.log_dir, group.name, seconds)
    if running is None:
        results.notes.append("py-spy is not installed: no profile taken (pip install -e '.[bench]')")
    return running


async def finish_profiler(profiler, results: Results) -> None:
    if profiler is not None:
        results.profile = (results.profile or {}) | await _finish_profile(profiler, " during the mixed run")


# --- HTTP --------------------------------------------------------------------------------------------------------


async def http_scenarios(
    infra: Infra, plan: Plan, results: Results, keys: dict, log_dir: Path, profile: bool = False
) -> None:
    from stocksync.embedded.processes import free_port

    if not keys or not (inf.SRC / "stocksync" / "http" / "app.py").exists():
        results.notes.append("HTTP API not available yet: the HTTP measures were skipped")
        return
    url = await infra.create_database("bench_http", template=TEMPLATE)
    port = free_port()
    apis = [
        Service.serve(["api"], url, infra.nats_url, log_dir, name=f"http-api-{n}", http_port=port).start()
        for n in range(1, plan.api_processes + 1)
    ]
    try:
        for api in apis:
            await wait_for_log(api, "serving")
        await _wait_http(port)
        spec = plan.spec()
        skus = sku_ids(spec)
        stores = [loc for loc in locations(spec) if loc.pickup_enabled]
        everywhere = [loc.location_id for loc in locations(spec)]
        import random

        rng = random.Random(1)
        popular = skus[: max(10, len(skus) // 20)]
        availability = [
            {
                "method": "GET",
                "path": f"/v1/availability?sku={rng.choice(popular)}&sku={rng.choice(skus)}"
                + "".join(f"&location_id={loc}" for loc in rng.sample(everywhere, 3)),
            }
            for _ in range(500)
        ]
        pickup = [
            {
                "method": "GET",
                "path": f"/v1/pickup?sku={rng.choice(popular)}&qty=1&near="
                f"{52.37 + rng.uniform(-0.05, 0.05):.4f},{4.90 + rng.uniform(-0.05, 0.05):.4f}"
                f"&limit=5",
            }
            for _ in range(500)
        ]
        reserve = [
            {
                "method": "POST",
                "path": "/v1/reservations",
                "body": {
                    "location_id": location_id,
                    "channel": "ecommerce",
                    "ttl_seconds": 3600,
                    "lines": [{"sku": sku, "qty": 1}],
                },
            }
            for location_id, sku in units_in_stock(log_dir / "stock.json", stores, popular, rng)
        ]
        peak = 0.0
        for name, requests, target in (
            ("availability", availability, plan.availability_rate),
            ("pickup", pickup, plan.availability_rate),
            ("reservations", reserve, plan.reservation_rate),
        ):
            capacity = 0.0
            for closed in (True, False):
                if closed:
                    rate, key = 0.0, f"{name} (max)"
                else:  # at the target rate, or below what the server showed it can take (else it only queues)
                    rate = float(target) if capacity >= target else max(50.0, round(0.5 * capacity, -1))
                    key = f"{name} ({rate:,.0f}/s offered)"
                sampler = ProcessSampler(
                    {
                        "api": fixed(*(api.pid for api in apis)),
                        "postgres": tree(infra.postgres_pid),
                        "bench": fixed(os.getpid()),
                    }
                )
                profiler = (
                    _profile_pids({"api": apis[0].pid}, log_dir, f"http-{name}", plan.http_seconds)
                    if closed and profile and name in ("availability", "reservations")
                    else None
                )
                with sampler:
                    answer = await _httpload(port, keys["ecommerce"], requests, log_dir, name, plan, rate)
                if profiler is not None:
                    results.profile = (results.profile or {}) | await _finish_profile(
                        profiler, f" during {key}"
                    )
                if closed:
                    capacity = answer["ok_rps"]
                answer["target_rate"] = target
                peak = max(peak, sampler.peak_mb()["api"])
                cpu = sampler.cpu_seconds()
                answer["cpu_seconds"] = {
                    **cpu,
                    "load generator": round(answer["cpu_seconds"], 2),
                    "other processes": round(max(0.0, cpu["other processes"] - answer["cpu_seconds"]), 2),
                }
                results.http[key] = answer
                lat = answer["latency_ms"]
                say(
                    f"- HTTP {key}: {answer['ok_rps']:,.0f} ok/s of {answer['rps']:,.0f}/s, p50 {lat['p50']:.1f} ms,"
                    f" p99 {lat['p99']:.1f} ms, statuses {answer['statuses']}"
                )
        results.memory["api (peak, HTTP load)"] = peak
        held = await fetchval(url, "SELECT count(*) FROM reservations WHERE event_id LIKE 'http:reserve:%'")
        posted = sum(
            a["statuses"].get("201", 0) for k, a in results.http.items() if k.startswith("reservations")
        )
        results.check(
            "HTTP: every 201 reservation is held in the ledger",
            held >= posted,
            f"{held:,} held, {posted:,} answered 201 (requests cut at the end may commit unanswered)",
        )
    finally:
        for api in apis:
            await asyncio.to_thread(api.stop)
        await infra.drop_database("bench_http")


def units_in_stock(
    stock_file: Path, stores: list, skus: list[str], rng, limit: int = 40_000
) -> list[tuple[str, str]]:
    """A (store, sku) per unit the template holds of ``skus`` at pickup ``stores``, shuffled: each unit is
    reserved at most once, so the stock lasts the run and the answers are reservations, not shortages."""
    wanted, at = set(skus), {store.location_id for store in stores}
    units = [
        (location_id, sku)
        for key, qty in json.loads(stock_file.read_text()).items()
        for location_id, sku in [key.split("|", 1)]
        if location_id in at and sku in wanted
        for _ in range(qty)
    ]
    rng.shuffle(units)
    return units[:limit]


async def _wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            line = await reader.readline()
            writer.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("the API did not answer /health/live")


async def _httpload(
    port: int, key: str, requests: list, log_dir: Path, name: str, plan: Plan, rate: float
) -> dict:
    requests_file = log_dir / f"http-{name}.json"
    requests_file.write_text(json.dumps(requests))
    out = log_dir / f"http-{name}-{int(rate)}.out.json"
    args = [
        sys.executable,
        "-m",
        "benchmarks.httpload",
        "--port",
        str(port),
        "--key",
        key,
        "--requests",
        str(requests_file),
        "--out",
        str(out),
        "--concurrency",
        str(plan.http_concurrency if not rate else 64),
        "--duration",
        str(plan.http_seconds),
        "--rate",
        str(rate),
    ]
    process = await asyncio.create_subprocess_exec(
        *args, env={**os.environ, "PYTHONPATH": inf.python_path()}, cwd=inf.REPO
    )
    if await process.wait() != 0:
        raise RuntimeError(f"the HTTP load generator failed for {name}")
    return json.loads(out.read_text())


# --- the whole run -----------------------------------------------------------------------------------------------


async def run_all(
    plan: Plan, args: argparse.Namespace, results: Results, infra: Infra, log_dir: Path
) -> None:
    from benchmarks.pgbench import run_pgbench
    from benchmarks.reconcile import measure_reconcile

    say(
        f"stocksync bench ({'quick' if plan.quick else 'full'}): PostgreSQL {infra.admin_url}, NATS {infra.nats_url}"
    )
    results.software["postgresql"] = await fetchval(infra.admin_url, "SELECT version()")
    stock = template_stock(plan)
    stock_file = log_dir / "stock.json"
    stock_file.write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in stock.items()}))
    results.seed = await build_template(infra, plan, stock)
    keys = results.seed.pop("keys")
    say(f"- template: {results.seed['positions']:,} positions seeded in {results.seed['seconds']} s")

    if "pgbench" in args.only:
        say(f"- pgbench -s {plan.pgbench_scale}, -c 4 -j 2 -T {plan.pgbench_seconds}")
        url = await infra.create_database("bench_pgbench")
        result = await asyncio.to_thread(
            run_pgbench,
            infra.pgbench,
            url,
            scale=plan.pgbench_scale,
            clients=4,
            threads=2,
            seconds=plan.pgbench_seconds,
        )
        await infra.drop_database("bench_pgbench")
        results.pgbench = asdict(result)
        say(f"  {result.tps:,.0f} tps")

    def timeout_for(events: int) -> float:
        """How long to wait for the ledger to catch up: generous, as a stuck event is itself a finding."""
        return (30 if plan.quick else 60) + events / 500

    if "mixed" in args.only:
        async with Group(infra, "mixed", log_dir, "worker") as group:
            await throughput(
                group,
                results,
                "mixed",
                plan.spec(events=plan.mixed_events, prefix="mix"),
                stock_file,
                timeout_for(plan.mixed_events),
                memory=True,
            )
            for rate in plan.sweep_rates:
                spec = plan.spec(
                    events=int(rate * plan.sweep_seconds), prefix=f"lat{rate}", duplicate_rate=0.0
                )
                scenario = await latency_run(
                    group, results, f"latency @ {rate:,}/s", spec, stock_file, rate, timeout_for(spec.events)
                )
                results.sweep.append(
                    {
                        "offered": rate,
                        "reached": scenario["publisher"]["publish_rate"],
                        **scenario["latency_ms"],
                    }
                )
    if "naive" in args.only:
        async with Group(infra, "naive", log_dir, "naive", plan.naive_concurrency, relay=False) as group:
            await throughput(
                group,
                results,
                "naive mixed",
                plan.spec(events=plan.naive_events, prefix="naive"),
                stock_file,
                timeout_for(plan.naive_events * 20),
            )
    if "hot" in args.only:
        async with Group(infra, "hot", log_dir, "worker") as group:
            await throughput(
                group,
                results,
                "hot sku",
                plan.spec(events=plan.hot_events, prefix="hot", hot=True),
                stock_file,
                timeout_for(plan.hot_events),
            )
            spec = plan.spec(
                events=int(plan.hot_latency_rate * plan.hot_latency_seconds),
                prefix="hotlat",
                hot=True,
                duplicate_rate=0.0,
            )
            await latency_run(
                group,
                results,
                f"hot sku latency @ {plan.hot_latency_rate:,}/s",
                spec,
                stock_file,
                plan.hot_latency_rate,
                timeout_for(spec.events),
            )
    if "naive" in args.only:
        async with Group(infra, "naivehot", log_dir, "naive", plan.naive_concurrency, relay=False) as group:
            await throughput(
                group,
                results,
                "naive hot sku",
                plan.spec(events=plan.naive_hot_events, prefix="naivehot", hot=True),
                stock_file,
                timeout_for(plan.naive_hot_events * 20),
            )
    if "http" in args.only:
        await http_scenarios(infra, plan, results, keys, log_dir, profile=bool(args.profile))
    if "reconcile" in args.only:
        results.reconcile = await measure_reconcile(
            infra, plan.recon_positions, plan.recon_movements, log_dir
        )
        say(f"- reconcile: {results.reconcile.get('summary')}")
    if args.profile:
        seconds = max(3.0, min(60.0, args.profile))
        async with Group(infra, "profile", log_dir, "worker") as group:
            results.notes.append(
                f"profile: py-spy at 100 Hz on the worker and the relay for {seconds:g} s of a separate "
                f"mixed run of {plan.mixed_events:,} events published as fast as possible"
            )
            await throughput(
                group,
                results,
                "profiled mixed",
                plan.spec(events=plan.mixed_events, prefix="prof"),
                stock_file,
                timeout_for(plan.mixed_events),
                profile_s=seconds,
            )


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument(
        "--only",
        default="pgbench,mixed,naive,hot,http,reconcile",
        help="comma-separated subset of: pgbench,mixed,naive,hot,http,reconcile",
    )
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
    args = parser.parse_args(argv)
    args.only = set(args.only.split(","))
    from stocksync.logs import configure_logging

    configure_logging("console", "warning")  # the seeding goes through LedgerService, which logs every batch
    plan = Plan.for_mode(args.quick)
    if args.events:
        plan.mixed_events = args.events
    if args.api_processes:
        plan.api_processes = args.api_processes
    if args.rates:
        plan.sweep_rates = [int(rate) for rate in args.rates.split(",")]
    command = "scripts/bench" + ("".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
    results = Results(
        started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        plan=asdict(plan),
        machine=inf.machine(),
    )
    results.notes.extend(args.note)
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
            from benchmarks.report import write_outputs

            write_outputs(
                results,
                report=Path(args.report or inf.REPO / "docs" / "benchmarks.md"),
                plot_path=Path(args.plot or inf.REPO / "docs" / "benchmarks-latency.png"),
                json_path=Path(args.json) if args.json else None,
            )
        infra.close()
    return 0 if all(c["ok"] for c in results.checks) else 1


def _nats_version() -> str:
    from stocksync.embedded.nats import nats_server_binary

    try:
        return subprocess.run(
            [str(nats_server_binary()), "--version"], capture_output=True, text=True
        ).stdout.strip()
    except Exception:
        return "unknown"
