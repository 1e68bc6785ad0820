"""A scenario's processes: a clone of the template, a clean NATS topology, and the applier (plus the relay)."""

from __future__ import annotations

import asyncio
import os

from benchmarks.infra import ProcessSampler, Service, fixed, reset_nats, tree, wait_for_log
from benchmarks.plan import Bench
from benchmarks.template import TEMPLATE


class Group:
    """One cloned database, a clean NATS topology, and the applier (plus the relay) running against them.

    The naive baseline runs without the relay: each of its one-event transactions would wake the relay for a pass
    of its own, and that cost (a product property, but not the one being compared) would lower the baseline and
    flatter the ratio. Without it the baseline is as fast as one transaction per event can be here.
    """

    def __init__(
        self, bench: Bench, name: str, applier: str, relay: bool = True, *, workers: int = 1, relays: int = 1
    ) -> None:
        self.bench, self.infra, self.log_dir = bench, bench.infra, bench.log_dir
        self.name, self.applier, self.relay = name, applier, relay
        self.copies = (workers, relays if relay else 0)  # several workers share the consumer; one relay leads
        self.appliers: list[Service] = []
        self.relays: list[Service] = []
        self.url = ""

    async def __aenter__(self) -> Group:
        self.url = await self.infra.create_database(f"bench_{self.name}", template=TEMPLATE)
        await reset_nats(self.infra.nats_url)
        workers, relays = self.copies
        self.appliers = [self._applier(n).start() for n in range(workers)]
        self.relays = [
            Service.serve(
                ["relay"], self.url, self.infra.nats_url, self.log_dir, name=self._named("relay", n)
            ).start()
            for n in range(relays)
        ]
        for service in self.services:
            await wait_for_log(service, "serving")
        await asyncio.sleep(0.5)  # the relay takes the lead, the worker binds its pull subscription
        return self

    @property
    def services(self) -> list[Service]:
        return [*self.appliers, *self.relays]

    def _named(self, role: str, n: int) -> str:
        return f"{self.name}-{role}" + (f"-{n + 1}" if n else "")

    def _applier(self, n: int) -> Service:
        """The product's worker, or a naive baseline (``benchmarks/naive.py``, ``naive_sql.py``)."""
        if self.applier == "worker":
            return Service.serve(
                ["worker"], self.url, self.infra.nats_url, self.log_dir, name=self._named("worker", n)
            )
        plan = self.bench.plan
        raw = self.applier == "naive_sql"
        module, concurrency = (
            ("naive_sql", plan.raw_concurrency) if raw else ("naive", plan.naive_concurrency)
        )
        args = ["-m", f"benchmarks.{module}", "--database", self.url, "--nats", self.infra.nats_url]
        return Service(self._named(module, n), [*args, "--concurrency", str(concurrency)], {}, self.log_dir)

    def sampler(self) -> ProcessSampler:
        infra = self.infra
        return ProcessSampler(
            {
                "worker": fixed(*(service.pid for service in self.appliers)),
                "relay": fixed(*(service.pid for service in self.relays)),
                "postgres": tree(infra.postgres_pid),
                "nats-server": fixed(infra.nats_pid),
                "bench": fixed(os.getpid()),
            }
        )

    @property
    def applier_service(self) -> Service:
        return self.appliers[0]

    @property
    def relay_service(self) -> Service | None:
        return self.relays[0] if self.relays else None

    async def __aexit__(self, *exc) -> None:
        for service in self.services:
            await asyncio.to_thread(service.stop)
        await self.infra.drop_database(f"bench_{self.name}")
