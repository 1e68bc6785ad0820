"""The API alone (``stocksync serve --role api``) on a clone of the template, loaded by ``benchmarks/httpload.py``
with an ``ecommerce`` key: availability, pickup and reservations, each in a closed loop (the most it answers)
and then at a fixed rate."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import infra as inf
from benchmarks import profile
from benchmarks.infra import ProcessSampler, Service, fetchval, fixed, run_module, tree, wait_for_log
from benchmarks.plan import Bench, Plan
from benchmarks.results import say
from benchmarks.template import TEMPLATE
from benchmarks.workload import locations, sku_ids

PROFILED = ("availability", "reservations")  # with --profile, py-spy on the API during their closed loops
# Fixed rates as shares of the closed loop's capacity: where an open load stops queueing on a shared machine
# (a rate near capacity queues whatever the server does). Availability only: each 201 reservation uses stock.
STEPS = (0.5, 0.7, 0.85)
SUSTAINED_P99 = {"availability": 15.0}


@dataclass
class Api:
    port: int
    services: list[Service]
    key: str


async def run(bench: Bench) -> None:
    from stocksync.embedded.processes import free_port

    infra, plan, results = bench.infra, bench.plan, bench.results
    if not bench.keys or not (inf.SRC / "stocksync" / "http" / "app.py").exists():
        results.notes.append("HTTP API not available yet: the HTTP measures were skipped")
        return
    url = await infra.create_database("bench_http", template=TEMPLATE)
    port = free_port()
    apis = [
        Service.serve(
            ["api"], url, infra.nats_url, bench.log_dir, name=f"http-api-{n}", http_port=port
        ).start()
        for n in range(1, plan.api_processes + 1)
    ]
    try:
        for api in apis:
            await wait_for_log(api, "serving")
        await _wait_http(port)
        requests = _requests(plan, bench.stock_file)
        api = Api(port, apis, bench.keys["ecommerce"])
        peak = 0.0
        for name, target in (
            ("availability", plan.availability_rate),
            ("pickup", plan.availability_rate),
            ("reservations", plan.reservation_rate),
        ):
            peak = max(peak, await _loads(bench, api, name, requests[name], target))
        results.memory["api (peak, HTTP load)"] = peak
        await _check_reservations_held(bench, url)
    finally:
        for api in apis:
            await asyncio.to_thread(api.stop)
        await infra.drop_database("bench_http")


def _requests(plan: Plan, stock_file: Path) -> dict[str, list[dict]]:
    """Availability asks 2 skus (one popular) at 3 locations, pickup 1 popular sku near a point, a reservation
    1 unit of a popular sku at a pickup store that holds it."""
    spec = plan.spec()
    skus = sku_ids(spec)
    stores = [loc for loc in locations(spec) if loc.pickup_enabled]
    everywhere = [loc.location_id for loc in locations(spec)]
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
        for location_id, sku in units_in_stock(stock_file, stores, popular, rng)
    ]
    return {"availability": availability, "pickup": pickup, "reservations": reserve}


async def _loads(bench: Bench, api: Api, name: str, requests: list, target: int) -> float:
    """A closed loop, then a fixed rate: the target, or below what the server showed it can take (else it only
    queues); for availability also steps below that capacity, for the highest rate that keeps its p99 target;
    returns the API's peak memory (MB)."""
    profiled = bool(bench.profile) and name in PROFILED
    closed, peak = await _load(bench, api, name, requests, 0.0, f"{name} (max)", profiled)
    closed["target_rate"] = target
    capacity = closed["ok_rps"]
    rates = [float(target) if capacity >= target else max(50.0, round(0.5 * capacity, -1))]
    if name in SUSTAINED_P99:
        rates += [max(50.0, round(share * capacity, -1)) for share in STEPS]
    for rate in dict.fromkeys(rates):
        key = f"{name} ({rate:,.0f}/s offered)"
        answer, api_peak = await _load(bench, api, name, requests, rate, key, False)
        answer["target_rate"] = target
        peak = max(peak, api_peak)
    if name in SUSTAINED_P99:
        _note_sustained(bench, name)
    return peak


def _note_sustained(bench: Bench, name: str) -> None:
    """The highest fixed rate offered whose p99 kept the target, and the lowest one that did not."""
    limit = SUSTAINED_P99[name]
    fixed = sorted(
        (a["offered_rate"], a["latency_ms"]["p99"])
        for k, a in bench.results.http.items()
        if k.startswith(name) and a["offered_rate"]
    )
    held = [f"{rate:,.0f}/s (p99 {p99:.1f} ms)" for rate, p99 in fixed if p99 <= limit]
    missed = [f"{rate:,.0f}/s (p99 {p99:.1f} ms)" for rate, p99 in fixed if p99 > limit]
    bench.results.notes.append(
        f"HTTP {name}, fixed rates: p99 ≤ {limit:g} ms held up to {held[-1] if held else 'none offered'};"
        f" missed from {missed[0] if missed else 'none: held at every rate offered'}"
    )


async def _load(
    bench: Bench, api: Api, name: str, requests: list, rate: float, key: str, profiled: bool
) -> tuple[dict, float]:
    """One load (``results.http[key]``), sampled (and profiled); returns it and the API's peak memory (MB)."""
    plan, results = bench.plan, bench.results
    sampler = ProcessSampler(
        {
            "api": fixed(*(service.pid for service in api.services)),
            "postgres": tree(bench.infra.postgres_pid),
            "bench": fixed(os.getpid()),
        }
    )
    pids = {"api": api.services[0].pid}
    profiler = profile.record(pids, bench.log_dir, f"http-{name}", plan.http_seconds) if profiled else None
    with sampler:
        answer = await _httpload(api, requests, bench.log_dir, name, plan, rate)
    if profiler is not None:
        await profile.collect(profiler, results, f" during {key}")
    answer["cpu_seconds"] = sampler.cpu_seconds_with("load generator", answer["cpu_seconds"])
    results.http[key] = answer
    lat = answer["latency_ms"]
    say(
        f"- HTTP {key}: {answer['ok_rps']:,.0f} ok/s of {answer['rps']:,.0f}/s, p50 {lat['p50']:.1f} ms,"
        f" p99 {lat['p99']:.1f} ms, statuses {answer['statuses']}"
    )
    return answer, sampler.peak_mb()["api"]


async def _check_reservations_held(bench: Bench, url: str) -> None:
    results = bench.results
    held = await fetchval(url, "SELECT count(*) FROM reservations WHERE event_id LIKE 'http:reserve:%'")
    posted = sum(a["statuses"].get("201", 0) for k, a in results.http.items() if k.startswith("reservations"))
    results.check(
        "HTTP: every 201 reservation is held in the ledger",
        held >= posted,
        f"{held:,} held, {posted:,} answered 201 (requests cut at the end may commit unanswered)",
    )


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


async def _httpload(api: Api, requests: list, log_dir: Path, name: str, plan: Plan, rate: float) -> dict:
    requests_file = log_dir / f"http-{name}.json"
    requests_file.write_text(json.dumps(requests))
    out = log_dir / f"http-{name}-{int(rate)}.out.json"
    args = [
        "--port",
        str(api.port),
        "--key",
        api.key,
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
    if await run_module("benchmarks.httpload", args) != 0:
        raise RuntimeError(f"the HTTP load generator failed for {name}")
    return json.loads(out.read_text())
