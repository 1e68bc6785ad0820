"""The mixed workload applied by the worker (with the relay), published as fast as possible; then the latency
sweep on the same clone: each rate of ``plan.sweep_rates`` offered for ``plan.sweep_seconds``.

Then the same mixed workload again on a fresh clone that has channels (spec section 7): ``web`` over the
warehouse, the online node and every store, and ``stores`` over every store, so that every store position is
summed by two channels and each of its changes makes the relay publish two channel entries as well as its own.
The two runs measured in the same run give what channel publishing costs the mixed event throughput.
"""

from __future__ import annotations

import time

from benchmarks.group import Group
from benchmarks.infra import fetchval, run_module, stocksync_env
from benchmarks.ledger import settle
from benchmarks.measure import latency_run, throughput
from benchmarks.plan import Bench
from benchmarks.results import pipeline_load, say
from benchmarks.workload import ONLINE, WAREHOUSE, WorkloadSpec, store_ids

MIXED = "mixed"
WITH_CHANNELS = "mixed, with channels"
BURST = "burst before the probe"
PROBE = "latency right after a burst, fresh skus @ 1,000/s"


def round_key(key: str, n: int) -> str:
    """The scenario key of the ``n``-th (from 1) run of ``key``: the first has the plain name."""
    return key if n == 1 else f"{key} (round {n})"


def bench_channels(spec: WorkloadSpec) -> list[dict]:
    """The channels of the second mixed run: every store in both (a location may be in several channels)."""
    stores = store_ids(spec)
    return [
        {
            "channel_id": "web",
            "name": "Bench web shop",
            "locations": [WAREHOUSE, ONLINE, *stores],
            "buffer": 2,
        },
        {"channel_id": "stores", "name": "Bench ship-from-store", "locations": stores, "buffer": 0},
    ]


async def run(bench: Bench) -> None:
    plan = bench.plan
    async with Group(bench, "mixed", "worker") as group:
        await caught_up(group)
        await throughput(group, MIXED, plan.spec(events=plan.mixed_events, prefix="mix"), memory=True)
        for rate in plan.sweep_rates:
            spec = plan.spec(events=int(rate * plan.sweep_seconds), prefix=f"lat{rate}", duplicate_rate=0.0)
            scenario = await latency_run(group, f"latency @ {rate:,}/s", spec, rate)
            seen = scenario["availability_latency_ms"] or {}
            bench.results.sweep.append(
                {
                    "offered": rate,
                    "reached": scenario["publisher"]["publish_rate"],
                    **scenario["latency_ms"],
                    "availability_p99": seen.get("p99"),
                    "availability_timed": scenario["availability_timed"],
                    **pipeline_load(scenario),
                }
            )
        await after_burst(group)
    # alternated, so that a slower spell of the shared machine does not fall on one side only
    for n in range(1, plan.channel_rounds + 1):
        await run_with_channels(bench, n)
        if n < plan.channel_rounds:
            async with Group(bench, "mixed_again", "worker") as group:
                await caught_up(group)
                spec = plan.spec(events=plan.mixed_events, prefix=f"mix{n + 1}")
                await throughput(group, round_key(MIXED, n + 1), spec)


async def after_burst(group: Group) -> None:
    """A burst of mixed events published as fast as possible, then, the moment the ledger has applied it (the
    relay perhaps still behind), the fresh-sku probe at ``plan.probe_rate``: what a web shop sees right after
    a peak (issue 13, point 3), each event timed to its own availability message and to its outcome."""
    plan = group.bench.plan
    await throughput(group, BURST, plan.spec(events=plan.burst_events, prefix="burst"), relayed=False)
    rate = plan.probe_rate
    spec = plan.spec(events=int(rate * plan.sweep_seconds), prefix="probe", fresh=True, duplicate_rate=0.0)
    await latency_run(group, PROBE, spec, rate)


async def run_with_channels(bench: Bench, n: int = 1) -> None:
    """The mixed throughput again, the same events under other ids, with the channels defined beforehand (their
    refresh relayed before the first event is published); after the first such run, `stocksync reconcile` on
    its ledger, which checks the channel bucket against the positions each channel sums."""
    plan = bench.plan
    channels = bench_channels(plan.spec())
    key = round_key(WITH_CHANNELS, n)
    async with Group(bench, "mixed_channels", "worker") as group:
        refresh_s = await define_channels(group, channels)
        say(
            f"- channels {', '.join(c['channel_id'] for c in channels)} defined, their refresh relayed in "
            f"{refresh_s:.1f} s (after the clone's own outbox)"
        )
        scenario = await throughput(group, key, plan.spec(events=plan.mixed_events, prefix=f"mch{n}"))
        scenario["channels"] = [
            {"channel_id": c["channel_id"], "locations": len(c["locations"]), "buffer": c["buffer"]}
            for c in channels
        ]
        scenario["channel_refresh_s"] = refresh_s
        scenario["channel_keys"] = await _channel_keys(group)
        if n == 1:
            await _reconcile(bench, group, scenario)


async def caught_up(group: Group) -> float:
    """Until the relay has published the clone's backlog (the seeded ledger's outbox, and a channel refresh):
    else a run would pay for it, with the relay's bucket writes at their slowest (a key not yet seen is read
    before it is written), and runs that waited would be compared with runs that did not. Returns the seconds."""
    started = time.perf_counter()
    state = await settle(
        group.url, group.infra.nats_url, "no-such-prefix", 0, group.bench.plan.timeout_for(50_000)
    )
    if not state.get("settled"):
        raise RuntimeError(f"the relay did not catch up with the clone's outbox: {state}")
    return time.perf_counter() - started


async def define_channels(group: Group, channels: list[dict]) -> float:
    """The channels through the product's own `put_channel` (what ``PUT /v1/channels/{id}`` does), once the
    relay has caught up with the clone's outbox; returns the seconds until it has published their refresh (every
    sku of their locations)."""
    from stocksync.adapters.channels import put_channel
    from stocksync.adapters.database import create_engine
    from stocksync.domain.channels import Channel

    await caught_up(group)
    started = time.perf_counter()
    engine = create_engine(group.url, pool_size=1)
    try:
        for c in channels:
            await put_channel(
                engine,
                Channel(
                    channel_id=c["channel_id"],
                    name=c["name"],
                    locations=tuple(c["locations"]),
                    buffer=c["buffer"],
                ),
            )
    finally:
        await engine.dispose()
    await caught_up(group)
    return time.perf_counter() - started


async def _channel_keys(group: Group) -> int:
    """How many channel entries the bucket holds (one per channel sku ever published)."""
    import nats

    from stocksync.wire import CHANNEL_KV_STREAM

    nc = await nats.connect(group.infra.nats_url, connect_timeout=5)
    try:
        return (await nc.jetstream().stream_info(CHANNEL_KV_STREAM)).state.messages
    finally:
        await nc.close()


async def _reconcile(bench: Bench, group: Group, scenario: dict) -> None:
    log_dir = group.log_dir
    report = log_dir / "reconcile-channels.json"
    code = await run_module(
        "stocksync.cli",
        ["reconcile", "--report", str(report)],
        log_dir / "reconcile-channels.log",
        env=stocksync_env(group.url, group.infra.nats_url, log_dir),
    )
    channels = await fetchval(group.url, "SELECT count(*) FROM channels")
    scenario["reconcile_exit"] = code
    bench.results.check(
        f"{WITH_CHANNELS}: `stocksync reconcile` exits 0 (channel bucket = the positions each channel sums)",
        code == 0,
        f"exit {code} with {channels} channels, {scenario['channel_keys']:,} channel entries"
        + ("" if code == 0 else f" (see {report.name} in the logs)"),
    )
