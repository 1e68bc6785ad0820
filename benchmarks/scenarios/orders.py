"""Online orders (spec section 7) over HTTP: ``POST /v1/orders`` on a channel over every bench store, in a closed
loop and then at a fixed rate, on the API alone (as ``http.py`` runs it) on a fresh clone of the template.

The figures are set against the reservations (``POST /v1/reservations``) the HTTP scenario measured in the same
run: an order locks its skus at every location of the channel and sources them in the core, where a reservation
locks one position. Each order has a unique ``order_id`` and 1–3 lines of bench skus drawn by popularity from the
stock the channel holds (simulated, so that the answers are allocations, not shortages); half of them give a
``ship_to`` point. Stores are thin, so some orders are split over several stores. Afterwards the ledger is checked:
every 201 is an allocated order, each allocated order holds exactly its lines in held reservations, the units
reserved at the positions are those lines, and no position is below zero.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import urllib.request
from pathlib import Path

from benchmarks import infra as inf
from benchmarks.infra import fetch, wait_for_log
from benchmarks.plan import Bench, Plan
from benchmarks.results import say
from benchmarks.scenarios.http import Api, _load, _wait_http
from benchmarks.template import TEMPLATE
from benchmarks.workload import sku_ids, store_ids

CHANNEL = "bench-stores"
PREFIX = "bench-order"
MAX_ORDERS = 30_000  # per load: more than a closed loop answers in the plan's seconds, so no id is sent twice
SPLIT_SHARE = 0.2  # orders with a line of more units of a tail sku than any one store holds
SPLIT_QTY_AT_MOST = 12


async def run(bench: Bench) -> None:
    from stocksync.embedded.processes import free_port

    infra, plan, results = bench.infra, bench.plan, bench.results
    if not bench.keys or not (inf.SRC / "stocksync" / "http" / "orders.py").exists():
        results.notes.append("online orders not available yet: the order measures were skipped")
        return
    url = await infra.create_database("bench_orders", template=TEMPLATE)
    port = free_port()
    service = inf.Service.serve(
        ["api"], url, infra.nats_url, bench.log_dir, name="orders-api", http_port=port
    ).start()
    try:
        await wait_for_log(service, "serving")
        await _wait_http(port)
        stores = store_ids(plan.spec())
        status = await asyncio.to_thread(
            _put, port, bench.keys["admin"], f"/v1/channels/{CHANNEL}", {"name": "Bench stores", "locations": stores}
        )
        if status != 200:
            raise RuntimeError(f"PUT /v1/channels/{CHANNEL} answered {status}")
        api = Api(port, [service], bench.keys["ecommerce"])
        loads = _order_lists(plan, bench.stock_file, stores)
        peak = await _order_loads(bench, api, loads)
        results.memory["api (peak, order load)"] = peak
        await _check_orders(bench, url, loads)
    finally:
        await asyncio.to_thread(service.stop)
        await infra.drop_database("bench_orders")


def _put(port: int, key: str, path: str, body: dict) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def _order_lists(plan: Plan, stock_file: Path, stores: list[str]) -> dict[str, list[dict]]:
    """Two lists of orders (one per load, ids unique over both), each line a sku drawn by popularity (weight
    1/rank) among those the channel still holds enough of, the stock taken as the orders before it would."""
    spec = plan.spec()
    skus = sku_ids(spec)
    at = set(stores)
    held: dict[str, int] = dict.fromkeys(skus, 0)
    most: dict[str, int] = dict.fromkeys(skus, 0)  # the most one store holds: only ever falls as orders take
    for key, qty in json.loads(stock_file.read_text()).items():
        location_id, sku = key.split("|", 1)
        if location_id in at:
            held[sku] += qty
            most[sku] = max(most[sku], qty)
    tail = [sku for sku in skus[len(skus) // 5 :] if 0 < most[sku] < SPLIT_QTY_AT_MOST]
    rng = random.Random(11)
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** spec.zipf_s for rank in range(len(skus))))
    lists: dict[str, list[dict]] = {"closed": [], "fixed": []}
    names = itertools.cycle(lists)  # dealt in turn: each load's first orders are like the other's
    misses = 0
    for n in itertools.count(1):
        if n > 2 * MAX_ORDERS or misses >= 10_000:
            break
        wanted = rng.choice((1, 1, 2, 2, 3))
        lines: dict[str, int] = {}
        if tail and rng.random() < SPLIT_SHARE:  # more of a tail sku than any one store holds: split over stores
            sku = rng.choice(tail)
            if held[sku] >= most[sku] + 1:
                lines[sku] = most[sku] + 1
        for _ in range(wanted * 4):  # a few draws: popular skus run out at the stores first
            sku = skus[bisect.bisect_left(cum, rng.random() * cum[-1])]
            qty = 2 if rng.random() < 0.15 else 1
            if len(lines) >= wanted:
                break
            if sku not in lines and held[sku] >= qty:
                lines[sku] = qty
        if not lines:
            misses += 1  # the draws found only skus the stores have run out of
            continue
        for sku, qty in lines.items():
            held[sku] -= qty
        name = next(names)
        body: dict = {
            "order_id": f"{PREFIX}-{name}-{n:06d}",
            "channel_id": CHANNEL,
            "ttl_seconds": 3600,
            "lines": [{"sku": sku, "qty": qty} for sku, qty in lines.items()],
        }
        if rng.random() < 0.5:
            body["ship_to"] = {
                "lat": round(52.37 + rng.uniform(-0.08, 0.08), 4),
                "lon": round(4.90 + rng.uniform(-0.12, 0.12), 4),
            }
        lists[name].append({"method": "POST", "path": "/v1/orders", "body": body})
    return lists


def reservation_figures(results) -> tuple[dict | None, dict | None]:
    """The reservations' closed loop and fixed-rate loads of this run (``http.py``), if it measured them."""
    http = results.http
    closed = http.get("reservations (max)")
    fixed = next((v for k, v in http.items() if k.startswith("reservations (") and "offered" in k), None)
    return closed, fixed


async def _order_loads(bench: Bench, api: Api, loads: dict[str, list[dict]]) -> float:
    """A closed loop, then a fixed rate: the rate the reservations were offered in this run when the orders'
    closed loop reached it, else half of what it reached (as ``http.py`` does); the API's peak memory (MB)."""
    plan, results = bench.plan, bench.results
    _, reserved_fixed = reservation_figures(results)
    target = float(reserved_fixed["offered_rate"]) if reserved_fixed else float(plan.reservation_rate)
    closed, peak = await _load(bench, api, "orders", loads["closed"], 0.0, "orders (max)", False)
    capacity = closed["statuses"].get("201", 0) / closed["seconds"]
    rate = target if capacity >= target else max(50.0, round(0.5 * capacity, -1))
    fixed, fixed_peak = await _load(
        bench, api, "orders-fixed", loads["fixed"], rate, f"orders ({rate:,.0f}/s offered)", False
    )
    for answer in (closed, fixed):
        answer["target_rate"] = target
        answer["orders_per_s"] = answer["statuses"].get("201", 0) / answer["seconds"]
    return max(peak, fixed_peak)


_PER_ORDER = """
    WITH wanted AS (
        SELECT o.order_id, l->>'sku' AS sku, sum((l->>'qty')::bigint) AS qty
        FROM orders o, jsonb_array_elements(o.lines) AS l
        WHERE o.status = 'allocated' AND o.order_id LIKE $1 GROUP BY 1, 2
    ), held AS (
        SELECT rl.reservation_id AS order_id, rl.sku, sum(rl.qty) AS qty
        FROM reservations r JOIN reservation_lines rl USING (reservation_id, location_id)
        WHERE r.status = 'held' AND r.reservation_id LIKE $1 GROUP BY 1, 2
    )
    SELECT count(*) FILTER (WHERE wanted.qty IS DISTINCT FROM held.qty) AS mismatched,
           coalesce(sum(wanted.qty), 0) AS ordered_units,
           coalesce(sum(held.qty), 0) AS held_units
    FROM wanted FULL JOIN held USING (order_id, sku)
    """
_LEDGER = """
    SELECT (SELECT count(*) FROM orders WHERE order_id LIKE $1 AND status = 'allocated') AS allocated,
           (SELECT count(*) FROM orders WHERE order_id LIKE $1 AND status = 'rejected') AS rejected,
           (SELECT count(*) FROM orders WHERE order_id LIKE $1 AND cardinality(locations) > 1) AS split,
           (SELECT coalesce(sum(reserved), 0) FROM positions) AS reserved,
           (SELECT coalesce(sum(rl.qty), 0) FROM reservations r JOIN reservation_lines rl
                USING (reservation_id, location_id) WHERE r.status = 'held') AS held_units,
           (SELECT count(*) FROM positions WHERE on_hand - reserved - damaged < 0) AS below_zero
    """


async def _check_orders(bench: Bench, url: str, loads: dict[str, list[dict]]) -> None:
    results = bench.results
    like = f"{PREFIX}-%"
    per_order = (await fetch(url, _PER_ORDER, like))[0]
    ledger = (await fetch(url, _LEDGER, like))[0]
    answers = {k: a for k, a in results.http.items() if k.startswith("orders")}
    created = sum(a["statuses"].get("201", 0) for a in answers.values())
    split_share = ledger["split"] / ledger["allocated"] if ledger["allocated"] else 0.0
    results.orders = {
        "channel": CHANNEL,
        "allocated": ledger["allocated"],
        "rejected": ledger["rejected"],
        "split": ledger["split"],
        "split_share": split_share,
        "answered_201": created,
        "ordered_units": int(per_order["ordered_units"]),
        "reserved_units": int(ledger["reserved"]),
    }
    say(
        f"  orders: {ledger['allocated']:,} allocated ({split_share:.0%} split over several stores), "
        f"{ledger['rejected']:,} refused, {int(ledger['reserved']):,} units reserved"
    )
    results.check(
        "orders: every 201 order is allocated in the ledger",
        ledger["allocated"] >= created,
        f"{ledger['allocated']:,} allocated, {created:,} answered 201 (requests cut at the end may commit unanswered)",
    )
    results.check(
        "orders: each allocated order holds exactly its lines in held reservations (none half allocated)",
        per_order["mismatched"] == 0,
        f"{per_order['mismatched']} (order, sku) mismatched; {int(per_order['ordered_units']):,} units ordered, "
        f"{int(per_order['held_units']):,} held for them",
    )
    results.check(
        "orders: reserved units at the positions = allocated order lines = held reservation lines",
        ledger["reserved"] == ledger["held_units"] == per_order["ordered_units"],
        f"positions {int(ledger['reserved']):,}, held reservation lines {int(ledger['held_units']):,}, "
        f"allocated order lines {int(per_order['ordered_units']):,}",
    )
    results.check(
        "orders: no position below zero",
        ledger["below_zero"] == 0,
        f"{ledger['below_zero']} positions with on_hand - reserved - damaged < 0",
    )
    # answered in time, failed, and at most one per connection answered after the load's end
    sent = {k: a["requests"] + sum(a.get("errors", {}).values()) + a["concurrency"] for k, a in answers.items()}
    results.check(
        "orders: no order id sent twice (each load's list outlasts it)",
        all(sent[k] <= len(loads["closed" if "max" in k else "fixed"]) for k in sent),
        ", ".join(f"{k}: {n:,} sent of {len(loads['closed' if 'max' in k else 'fixed']):,}" for k, n in sent.items()),
    )
