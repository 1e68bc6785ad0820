"""The two measures every NATS scenario is made of, on a running `Group`: a throughput run (published as fast
as possible, applied events/s from the ledger) and a latency run (a fixed rate offered, publish-to-visible), each
with its consistency checks."""

from __future__ import annotations

import json
from dataclasses import asdict

from benchmarks import profile, scrape
from benchmarks.group import Group
from benchmarks.ledger import RelayLag, ledger_rate, settle, stage_breakdown
from benchmarks.publishing import prepare_messages, publish, publisher_summary
from benchmarks.results import Results, say
from benchmarks.workload import WorkloadSpec


async def throughput(
    group: Group,
    key: str,
    spec: WorkloadSpec,
    timeout: float | None = None,
    memory: bool = False,
    profile_s: float = 0,
    profile_label: str = " during the mixed run",
    relayed: bool = True,
) -> dict:
    """``spec`` published as fast as possible; ``timeout`` (default ``plan.timeout_for(spec.events)``) for the
    ledger to settle; ``memory``: the applier's and the relay's peaks go to the report's memory table;
    ``relayed=False``: settled once the ledger has applied it, the relay perhaps still behind."""
    results, plan = group.bench.results, group.bench.plan
    timeout = plan.timeout_for(spec.events) if timeout is None else timeout
    say(
        f"- {key}: {spec.events:,} events{' (one hot sku)' if spec.hot else ''}, published as fast as possible, "
        f"applied by the {group.applier}"
    )
    messages = await prepare_messages(spec, group.bench.stock_file, group.log_dir)
    sampler = group.sampler()
    profiler = _start_profiler(group, results, profile_s) if profile_s else None
    async with RelayLag(group.url) as lag:
        with sampler:
            published = await publish(group.infra, spec, messages, group.log_dir)
            relayed = relayed and group.relay
            nats_url, unique = group.infra.nats_url, published["unique"]
            state = await settle(group.url, nats_url, spec.prefix, unique, timeout, relayed)
    if profiler is not None:
        await profile.collect(profiler, results, profile_label)
    rate = await ledger_rate(group.url, spec.prefix, published["wall_start"], published["wall_end"])
    peak = sampler.peak_mb()
    results.scenarios[key] = scenario = {
        "spec": asdict(spec),
        "applier": group.applier,
        "relay": relayed,  # waited for: nothing left unrelayed
        "publisher": publisher_summary(published),
        "ledger": rate,
        "end_state": state,
        "relay_behind": lag.summary if group.relay else None,
        "memory_mb": peak,
        "cpu_seconds": sampler.cpu_seconds_with("publisher", published["cpu_seconds"]),
    }
    if memory:
        results.memory.update(
            {f"{group.applier} (peak, {key})": peak["worker"], f"relay (peak, {key})": peak["relay"]}
        )
    say(
        f"  {rate['sustained_per_s']:,.0f} applied/s sustained (ledger), "
        f"publisher {published['publish_rate']:,.0f} msg/s, worker peak RSS {peak['worker']} MB"
    )
    _consistency(results, key, published, state, {**rate, "relay": relayed})
    return scenario


async def latency_run(group: Group, key: str, spec: WorkloadSpec, rate: float) -> dict:
    """``spec`` offered at ``rate`` events/s, each event's outcome awaited: publish-to-visible latency."""
    results = group.bench.results
    timeout = group.bench.plan.timeout_for(spec.events)
    say(f"- {key}: {spec.events:,} events at {rate:,.0f}/s offered{' (one hot sku)' if spec.hot else ''}")
    messages = await prepare_messages(spec, group.bench.stock_file, group.log_dir)
    before = await scrape.scrape(group.services)
    sampler = group.sampler()
    with sampler:
        published = await publish(
            group.infra, spec, messages, group.log_dir, rate=rate, latency=True, wait=timeout
        )
        state = await settle(group.url, group.infra.nats_url, spec.prefix, published["unique"], timeout)
    inside = scrape.summary(before, await scrape.scrape(group.services))
    ledger = await ledger_rate(group.url, spec.prefix, published["wall_start"], published["wall_end"])
    lat, seen = published["latency_ms"], published["availability_latency_ms"]
    stages = await stage_breakdown(group.url, published.get("traces", []))
    say(
        f"  publish-to-visible p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms "
        f"(reached {published['publish_rate']:,.0f}/s; "
        f"{published['outcomes_matched']:,}/{published['unique']:,} outcomes)"
        + (f"; to the availability message p99 {seen['p99']:.1f} ms" if seen else "")
    )
    say("  inside (ms, p50/p99): " + ", ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in inside.items()))
    results.scenarios[key] = scenario = {
        "spec": asdict(spec),
        "offered_rate": rate,
        "publisher": publisher_summary(published),
        "latency_ms": lat,
        "availability_latency_ms": seen,
        "availability_timed": published["availability_timed"],
        "stages_ms": stages,
        "pipeline_ms": inside,
        "outcomes_matched": published["outcomes_matched"],
        "ledger": ledger,
        "end_state": state,
        "cpu_seconds": sampler.cpu_seconds_with("publisher", published["cpu_seconds"]),
    }
    _consistency(results, key, published, state, ledger)
    results.check(
        f"{key}: every event's outcome seen",
        published["outcomes_matched"] == published["unique"],
        f"{published['outcomes_matched']:,} of {published['unique']:,}",
    )
    return scenario


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


def _start_profiler(group: Group, results: Results, seconds: float):
    """py-spy on the group's worker and relay; a note in the report where py-spy is missing."""
    pids = {"worker": group.applier_service.pid}
    if group.relay_service is not None:
        pids["relay"] = group.relay_service.pid
    running = profile.record(pids, group.log_dir, group.name, seconds)
    if running is None:
        results.notes.append("py-spy is not installed: no profile taken (pip install -e '.[bench]')")
    return running
