"""The plan: how big each scenario is (``--quick`` or the full run), and what every scenario runs with."""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.workload import WorkloadSpec

if TYPE_CHECKING:
    from benchmarks.infra import Infra
    from benchmarks.results import Results


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
    burst_events: int
    probe_rate: int
    pgbench_scale: int
    pgbench_seconds: int
    http_seconds: float
    http_concurrency: int
    reservation_rate: int
    availability_rate: int
    recon_positions: int
    recon_movements: int
    channel_rounds: int
    naive_concurrency: int = 4
    raw_concurrency: int = 16  # the raw asyncpg baseline's connections (issue 13, point 5)
    # API processes sharing the port (SO_REUSEPORT). One: on 2 cores that also run PostgreSQL and the load
    # generator, a second gave no more availability reads and fewer, slower reservations (smaller groups).
    api_processes: int = 1

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(quick=quick, **{name: copy(sizes[0 if quick else 1]) for name, sizes in SIZES.items()})

    def spec(self, **overrides) -> WorkloadSpec:
        return replace(WorkloadSpec(stores=self.stores, skus=self.skus), **overrides)

    def timeout_for(self, events: int) -> float:
        """How long to wait for the ledger to catch up: generous, as a stuck event is itself a finding."""
        return (30 if self.quick else 60) + events / 500


# each size of the plan: (quick, full)
SIZES = {
    "stores": (6, 20),
    "skus": (1_000, 5_000),
    "mixed_events": (20_000, 150_000),
    "naive_events": (1_500, 6_000),
    "hot_events": (8_000, 60_000),
    "naive_hot_events": (1_000, 4_000),
    "sweep_rates": ([1_000, 3_000], [250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 8_000]),
    "sweep_seconds": (4, 10),
    "hot_latency_rate": (1_000, 1_000),
    "hot_latency_seconds": (3, 10),
    # the burst before the fresh-sku probe (issue 13, point 3: the deployed topology was probed after 30,000)
    "burst_events": (5_000, 30_000),
    "probe_rate": (1_000, 1_000),
    "pgbench_scale": (4, 10),
    "pgbench_seconds": (5, 20),
    "http_seconds": (3, 10),
    "http_concurrency": (16, 16),
    "reservation_rate": (1_000, 1_000),
    "availability_rate": (3_000, 3_000),
    "recon_positions": (10_000, 100_000),
    "recon_movements": (100_000, 1_000_000),
    # mixed throughput runs without and with channels, alternated (the first without is "mixed" itself)
    "channel_rounds": (2, 2),
}


@dataclass
class Bench:
    """What every scenario runs with: the plan, the results it adds to, the servers, its scratch directory,
    the seeded template's stock (``stock.json``) and API keys, and the py-spy seconds asked for (0: none)."""

    plan: Plan
    results: Results
    infra: Infra
    log_dir: Path
    stock_file: Path
    keys: dict
    profile: float
