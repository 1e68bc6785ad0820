"""The benchmark retailer and its event mix: deterministic from a `WorkloadSpec`, so every process that needs the
events (the publisher, the seeding, the checks) makes the very same ones from the spec alone.

- Locations: ``stores`` pickup-enabled stores around Amsterdam, one online node, one warehouse.
- Skus: ``skus`` of them, chosen with Zipf-like popularity (weight of rank r is 1 / r**zipf_s).
- Stock: demo-like depth (warehouse deep, online medium, stores thin and uneven, as `stocksync demo`), plus what
  the run itself will sell from each position, so that most sales do not drive stock negative (they would still
  be applied, with an alert, but that is not the peak-day case being measured).
- Mix: about 70% sale, 10% return, 10% reserve, 7% collect or cancel (of reservations made earlier in the
  stream), 3% receipt, adjust or count.
- ``hot``: the same mix with every event on one position (the most popular sku at one store).
- ``fresh``: no mix: every event a receipt of one unit of a sku no other event names, at the stores in turn,
  so that each event's availability message is its own (the latency probe times it).
- Intended duplicates: a small share of events is published a second time with the same ``event_id``; half of
  them carry ``Nats-Msg-Id`` (JetStream drops them), half do not (the ledger answers ``duplicate``).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

WAREHOUSE = "wh-bench"
ONLINE = "online-bench"
MIX = (  # (type, share)
    ("sale", 0.70),
    ("return", 0.10),
    ("reserve", 0.10),
    ("settle", 0.07),  # collect (60%) or cancel (40%) of an earlier reservation
    ("receipt", 0.01),
    ("adjust", 0.01),
    ("count", 0.01),
)
SETTLE_LAG = 2_000  # a reservation is collected or cancelled only this many events after its reserve
BASE_TIME = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # Black Friday morning; occurred_at = BASE_TIME + i µs


@dataclass(frozen=True)
class WorkloadSpec:
    stores: int = 20
    skus: int = 5_000
    zipf_s: float = 1.0
    events: int = 100_000
    seed: int = 6
    hot: bool = False
    fresh: bool = False
    prefix: str = "mix"  # event and reservation ids start with it: unique per scenario
    duplicate_rate: float = 0.005

    def to_json(self) -> str:
        return msgspec.json.encode(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkloadSpec:
        return cls(**msgspec.json.decode(text))


@dataclass(frozen=True)
class BenchLocation:
    location_id: str
    kind: str
    name: str
    pickup_enabled: bool = False
    lat: float | None = None
    lon: float | None = None


def store_ids(spec: WorkloadSpec) -> list[str]:
    return [f"store-{n:03d}" for n in range(1, spec.stores + 1)]


def locations(spec: WorkloadSpec) -> list[BenchLocation]:
    rng = random.Random(spec.seed)
    stores = [
        BenchLocation(
            location_id=sid,
            kind="store",
            name=f"Bench store {sid}",
            pickup_enabled=True,
            lat=round(52.37 + rng.uniform(-0.08, 0.08), 5),
            lon=round(4.90 + rng.uniform(-0.12, 0.12), 5),
        )
        for sid in store_ids(spec)
    ]
    return [
        BenchLocation(
            location_id=WAREHOUSE, kind="warehouse", name="Bench distribution centre", lat=52.30, lon=4.76
        ),
        BenchLocation(location_id=ONLINE, kind="online", name="Bench web fulfilment"),
        *stores,
    ]


def sku_ids(spec: WorkloadSpec) -> list[str]:
    """In popularity order: ``sku_ids(spec)[0]`` is the most popular."""
    return [f"SKU-{n:06d}" for n in range(spec.skus)]


def hot_position(spec: WorkloadSpec) -> tuple[str, str]:
    return store_ids(spec)[0], sku_ids(spec)[0]


@dataclass
class Outbound:
    """One message to publish."""

    subject: str
    event_id: str
    body: bytes
    msg_id: bool = True  # set the Nats-Msg-Id header
    duplicate: bool = False  # a second publish of an event already in the list


@dataclass
class _Generator:
    spec: WorkloadSpec
    stock: dict[tuple[str, str], int] = field(default_factory=dict)  # simulated on_hand, for counts

    def __post_init__(self) -> None:
        spec = self.spec
        self.rng = random.Random(spec.seed * 7919 + (1 if spec.hot else 0))
        self.skus = sku_ids(spec)
        self.cum = list(itertools.accumulate(1.0 / (r + 1) ** spec.zipf_s for r in range(spec.skus)))
        self.stores = store_ids(spec)
        self.types = [t for t, _ in MIX]
        self.type_cum = list(itertools.accumulate(share for _, share in MIX))
        self.held: deque[tuple[int, str, str, list[str]]] = deque()  # (index, reservation_id, location, skus)
        self.demand: dict[tuple[str, str], int] = {}
        self.hot = hot_position(spec)

    # -- choices ---------------------------------------------------------------------------------------------

    def sku(self) -> str:
        return self.skus[bisect.bisect_left(self.cum, self.rng.random() * self.cum[-1])]

    def distinct_skus(self, n: int) -> list[str]:
        chosen: list[str] = []
        while len(chosen) < n:
            sku = self.sku()
            if sku not in chosen:
                chosen.append(sku)
        return chosen

    def kind(self) -> str:
        return self.types[min(bisect.bisect_left(self.type_cum, self.rng.random()), len(self.types) - 1)]

    def sale_location(self) -> str:
        return ONLINE if self.rng.random() < 0.25 else self.rng.choice(self.stores)

    # -- events ----------------------------------------------------------------------------------------------

    def events(self) -> list[Outbound]:
        out: list[Outbound] = []
        pending_dups: list[tuple[int, Outbound]] = []
        dup_toggle = False
        for i in range(self.spec.events):
            event = self.event(i)
            key = (event["location_id"], event["type"])
            subject = f"stocksync.in.{key[0]}.{key[1]}"
            outbound = Outbound(subject=subject, event_id=event["event_id"], body=msgspec.json.encode(event))
            out.append(outbound)
            if self.rng.random() < self.spec.duplicate_rate:
                dup_toggle = not dup_toggle
                copy = Outbound(subject, outbound.event_id, outbound.body, msg_id=dup_toggle, duplicate=True)
                pending_dups.append((i + 50, copy))
            while pending_dups and pending_dups[0][0] <= i:
                out.append(pending_dups.pop(0)[1])
        out.extend(dup for _, dup in pending_dups)
        return out

    def event(self, i: int) -> dict:
        spec = self.spec
        event_id = f"{spec.prefix}:{i:08d}"
        occurred_at = (BASE_TIME + timedelta(microseconds=i)).isoformat().replace("+00:00", "Z")
        if spec.fresh:
            location = self.stores[i % len(self.stores)]
            line = {"sku": f"{spec.prefix}-{i:08d}", "qty": 1}
            return {
                "event_id": event_id,
                "type": "receipt",
                "occurred_at": occurred_at,
                "location_id": location,
                "source": "bench:probe",
                "lines": [line],
            }
        kind = self.kind()
        if kind == "settle":
            if self.held and self.held[0][0] <= i - SETTLE_LAG:
                _, rid, location, skus = self.held.popleft()
                collect = self.rng.random() < 0.6
                if collect:
                    for sku in skus:
                        self._move(location, sku, -1)
                return {
                    "event_id": event_id,
                    "type": "collect" if collect else "cancel",
                    "location_id": location,
                    "occurred_at": occurred_at,
                    "source": "bench:web",
                    "reservation_id": rid,
                }
            kind = "sale"
        hot_location, hot_sku = self.hot
        base = {"event_id": event_id, "type": kind, "occurred_at": occurred_at}
        if kind == "sale":
            location = hot_location if spec.hot else self.sale_location()
            n = 1 if spec.hot else (1 if (r := self.rng.random()) < 0.8 else 2 if r < 0.95 else 3)
            skus = [hot_sku] if spec.hot else self.distinct_skus(n)
            lines = [{"sku": sku, "qty": 1 if self.rng.random() < 0.9 else 2} for sku in skus]
            for line in lines:
                self._move(location, line["sku"], -line["qty"])
            return {
                **base,
                "location_id": location,
                "source": f"pos:{location}:till-{i % 4 + 1}",
                "lines": lines,
            }
        if kind == "return":
            location = hot_location if spec.hot else self.sale_location()
            sku = hot_sku if spec.hot else self.sku()
            damaged = self.rng.random() < 0.1
            if not damaged:
                self._move(location, sku, 1)
            line = {"sku": sku, "qty": 1, **({"disposition": "damaged"} if damaged else {})}
            return {**base, "location_id": location, "source": f"pos:{location}:till-1", "lines": [line]}
        if kind == "reserve":
            location = hot_location if spec.hot else self.rng.choice(self.stores)
            skus = [hot_sku] if spec.hot else self.distinct_skus(1 if self.rng.random() < 0.85 else 2)
            rid = f"{spec.prefix}-r{i:08d}"
            self.held.append((i, rid, location, skus))
            for sku in skus:
                self.demand[(location, sku)] = self.demand.get((location, sku), 0) + 1
            return {
                **base,
                "location_id": location,
                "source": "bench:web",
                "reservation_id": rid,
                "channel": "ecommerce",
                "ttl_seconds": 7200,
                "lines": [{"sku": s, "qty": 1} for s in skus],
            }
        if kind == "receipt":
            location = (
                hot_location
                if spec.hot
                else (
                    WAREHOUSE
                    if (r := self.rng.random()) < 0.5
                    else ONLINE
                    if r < 0.6
                    else self.rng.choice(self.stores)
                )
            )
            skus = [hot_sku] if spec.hot else self.distinct_skus(self.rng.randint(1, 5))
            lines = [{"sku": sku, "qty": self.rng.randint(5, 50)} for sku in skus]
            for line in lines:
                self._move(location, line["sku"], line["qty"])
            return {**base, "location_id": location, "source": "bench:wms", "lines": lines}
        location = hot_location if spec.hot else self.rng.choice(self.stores)
        sku = hot_sku if spec.hot else self.sku()
        if kind == "adjust":
            delta = self.rng.choice((-3, -2, -1, 1, 2))
            reason = "found" if delta > 0 else self.rng.choice(("shrinkage", "damage", "correction"))
            self._move(location, sku, delta)
            return {
                **base,
                "location_id": location,
                "source": "staff:bench",
                "lines": [{"sku": sku, "delta": delta, "reason": reason}],
            }
        counted = max(0, self.stock.get((location, sku), 0) + self.rng.randint(-2, 1))
        self.stock[(location, sku)] = counted
        return {
            **base,
            "location_id": location,
            "source": "staff:bench",
            "lines": [{"sku": sku, "counted": counted}],
        }

    def _move(self, location: str, sku: str, delta: int) -> None:
        key = (location, sku)
        self.stock[key] = self.stock.get(key, 0) + delta
        if delta < 0:
            self.demand[key] = self.demand.get(key, 0) - delta


def initial_stock(spec: WorkloadSpec) -> dict[tuple[str, str], int]:
    """Demo-like depth per location kind, plus 1.25 times what this run will take from each position."""
    dry = _Generator(spec)
    dry.events()
    rng = random.Random(spec.seed)
    depth = {"warehouse": (50, 400), "online": (5, 60), "store": (0, 12)}
    stock: dict[tuple[str, str], int] = {}
    for location in locations(spec):
        low, high = depth[location.kind]
        for sku in sku_ids(spec):
            qty = rng.randint(low, high) + (dry.demand.get((location.location_id, sku), 0) * 5 + 3) // 4
            if qty > 0:
                stock[(location.location_id, sku)] = qty
    return stock


def generate(spec: WorkloadSpec, stock: dict[tuple[str, str], int] | None = None) -> list[Outbound]:
    """The messages to publish, in order (intended duplicates included, flagged)."""
    return _Generator(spec, dict(stock if stock is not None else initial_stock(spec))).events()


def seed_receipts(
    spec: WorkloadSpec, stock: dict[tuple[str, str], int], lines_per_event: int = 500
) -> list[dict]:
    """The stock as receipt event bodies (dicts in the inbound contract), at most ``lines_per_event`` lines each."""
    by_location: dict[str, list[dict]] = {}
    for (location, sku), qty in sorted(stock.items()):
        by_location.setdefault(location, []).append({"sku": sku, "qty": qty})
    occurred = (BASE_TIME - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    receipts = []
    for location, lines in by_location.items():
        for n, start in enumerate(range(0, len(lines), lines_per_event)):
            receipts.append(
                {
                    "event_id": f"seed:{spec.prefix}:{location}:{n}",
                    "type": "receipt",
                    "location_id": location,
                    "occurred_at": occurred,
                    "source": "bench:seed",
                    "lines": lines[start : start + lines_per_event],
                }
            )
    return receipts
