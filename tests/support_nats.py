"""Helpers for the NATS pipeline tests: events on subjects, waiting for outcomes, a reference ledger, and the
worker and relay run for real (as ``stocksync serve`` processes, or as tasks with their own engine and client).

Everything talks to real PostgreSQL and real nats-servers. Waits poll for a condition until a generous
deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import asyncpg
import msgspec
import nats
import psutil
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, PubAck

import stocksync
from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.adapters.outbox import LEADER_LOCK, unpacked
from stocksync.aio import cancel_and_wait
from stocksync.domain.events import Command, InboundEvent, encode
from stocksync.domain.ledger import Ledger
from stocksync.domain.model import Location, PositionKey
from stocksync.embedded.processes import terminate
from stocksync.messages import PositionBody
from stocksync.messaging.relay import OutboxRelay
from stocksync.messaging.topology import migrate_topology, worker_consumer
from stocksync.messaging.worker import EventWorker
from stocksync.migrate import migrate_database_async
from stocksync.service.ledger_service import LedgerService, body_hash
from stocksync.wire import IN_STREAM, WORKER_CONSUMER
from stocksync_client.connection import connect
from tests.support import NatsServer
from tests.support_ledger import T0, store

T = TypeVar("T")

# Generous: shared CI machines are slow and noisy; a wait ends as soon as its condition holds.
DEADLINE_S = 120.0


# --- set-up ---------------------------------------------------------------------------------------------


async def prepare(database_url: str, nats_url: str, location_ids: Iterable[str]) -> None:
    """Schema, NATS topology and the locations the events name (unknown locations would be rejected)."""
    await migrate_database_async(database_url)
    await migrate_topology(nats_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        await upsert_locations(engine, [store(location_id) for location_id in location_ids])
    finally:
        await engine.dispose()


async def set_ack_wait(js: JetStreamContext, seconds: float) -> None:
    """Set how long a delivery the worker never acknowledged (a SIGKILLed worker's batch) waits for redelivery."""
    config = worker_consumer()
    config.ack_wait = seconds
    await js.add_consumer(IN_STREAM, config)


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A client of the test's own that survives server restarts."""
    nc = await connect(url, name="stocksync-test")
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


# --- publishing -----------------------------------------------------------------------------------------


def subject_of(event: InboundEvent) -> str:
    return f"stocksync.in.{event.location_id}.{event.type}"


async def publish_events(
    js: JetStreamContext, events: Sequence[InboundEvent], *, msg_id: bool = True, concurrency: int = 200
) -> list[PubAck]:
    """Publish each event on its subject, ``Nats-Msg-Id`` = event_id unless ``msg_id`` is false.

    Up to ``concurrency`` publishes are in flight, so the stream may store them in a slightly different
    order than given: read the stream for the order that counts.
    """
    acks: list[PubAck] = []
    for start in range(0, len(events), concurrency):
        chunk = events[start : start + concurrency]
        acks.extend(
            await asyncio.gather(
                *(
                    js.publish(
                        subject_of(event),
                        encode(event),
                        headers={"Nats-Msg-Id": event.event_id} if msg_id else None,
                        timeout=30,
                    )
                    for event in chunk
                )
            )
        )
    return acks


async def publish_until_acked(
    js: JetStreamContext, event: InboundEvent, *, deadline_s: float = DEADLINE_S
) -> None:
    """Publish one event, retrying while the server is away (``Nats-Msg-Id`` makes retries harmless)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await js.publish(
                subject_of(event), encode(event), headers={"Nats-Msg-Id": event.event_id}, timeout=2
            )
            return
        except (nats.errors.Error, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# --- waiting --------------------------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = DEADLINE_S,
    interval: float = 0.2,
    what: str = "the condition",
) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except Exception as error:  # a server still coming back: keep polling
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s; last: {last!r}"[:4000])
        await asyncio.sleep(interval)


# --- reading the ledger (SQL, so the test does not trust the code it tests) --------------------------------


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def positions(url: str, location_ids: Iterable[str]) -> dict[PositionKey, dict[str, int]]:
    rows = await fetch(
        url,
        "SELECT location_id, sku, on_hand, reserved, damaged, safety_stock, version FROM positions"
        " WHERE location_id = ANY($1::text[])",
        list(location_ids),
    )
    return {
        (r["location_id"], r["sku"]): {
            k: r[k] for k in ("on_hand", "reserved", "damaged", "safety_stock", "version")
        }
        for r in rows
    }


async def outcomes(url: str, location_ids: Iterable[str]) -> dict[str, str]:
    """event_id -> recorded outcome (``applied``, ``duplicate`` or ``rejected``); one row per event_id."""
    rows = await fetch(
        url,
        "SELECT event_id, outcome FROM processed_events WHERE location_id = ANY($1::text[])",
        list(location_ids),
    )
    return {r["event_id"]: r["outcome"] for r in rows}


async def movements_per_event(url: str, location_ids: Iterable[str]) -> Counter[str]:
    rows = await fetch(
        url,
        "SELECT event_id, count(*) AS n FROM movements WHERE location_id = ANY($1::text[]) GROUP BY event_id",
        list(location_ids),
    )
    return Counter({r["event_id"]: r["n"] for r in rows})


async def reservation_statuses(url: str, location_ids: Iterable[str]) -> dict[str, str]:
    rows = await fetch(
        url,
        "SELECT reservation_id, status FROM reservations WHERE location_id = ANY($1::text[])",
        list(location_ids),
    )
    return {r["reservation_id"]: r["status"] for r in rows}


async def lock_waiters(url: str) -> list[int]:
    """Backend pids of stocksync connections to this database that wait for a lock."""
    rows = await fetch(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'stocksync'"
        " AND wait_event_type = 'Lock'",
    )
    return [r["pid"] for r in rows]


async def unrelayed(url: str) -> int:
    return (await fetch(url, "SELECT count(*) AS n FROM outbox WHERE relayed_at IS NULL"))[0]["n"]


async def outbox_messages(url: str) -> list:
    """Every message the outbox holds, in outbox order (a bundle's each)."""
    rows = await fetch(
        url, "SELECT subject, msg_id, payload, kv_key, version, traceparent FROM outbox ORDER BY id"
    )
    return unpacked([SimpleNamespace(**row) for row in rows])


async def count_processed(url: str, location_ids: Iterable[str]) -> int:
    return len(await outcomes(url, location_ids))


# --- reading streams ------------------------------------------------------------------------------------


async def read_stream(js: JetStreamContext, stream: str, subject: str, *, idle_s: float = 5.0) -> list[Msg]:
    """Every message ``stream`` holds on ``subject`` (wildcards allowed), in stream order, by an ordered consumer."""
    info = await js.stream_info(stream, subjects_filter=subject)
    expected = sum((info.state.subjects or {}).values())
    if expected == 0:
        return []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    msgs: list[Msg] = []
    try:
        while len(msgs) < expected:
            msg = await sub.next_msg(timeout=idle_s)
            msgs.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return msgs


async def consumer_settled(js: JetStreamContext) -> bool:
    """The worker's consumer has nothing left to deliver and nothing waiting for an ack."""
    info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


def decode_availability(data: bytes) -> PositionBody:
    """An availability message or bucket value, its `as_of` left out."""
    return msgspec.json.decode(data, type=PositionBody)


def versions_in_stream_order(msgs: Iterable[Msg]) -> dict[PositionKey, list[int]]:
    """The availability ``version``s of each position, in the order the out stream holds them."""
    seen: dict[PositionKey, list[int]] = {}
    for msg in msgs:
        body = decode_availability(msg.data)
        seen.setdefault((body.location_id, body.sku), []).append(body.version)
    return seen


def out_of_order(seen: dict[PositionKey, list[int]]) -> dict[PositionKey, list[int]]:
    """Positions whose versions are not strictly increasing in stream order (empty when all are)."""
    return {key: versions for key, versions in seen.items() if any(a >= b for a, b in pairwise(versions))}


# --- the reference model --------------------------------------------------------------------------------


@dataclass
class ReferenceLedger:
    """The pure core applied to the same events, in one order, for the numbers the service must reach."""

    location_ids: Iterable[str]
    ledger: Ledger = field(init=False)
    outcomes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        locations: dict[str, Location] = {loc: store(loc) for loc in self.location_ids}
        self.ledger = Ledger(now=T0, locations=locations)

    def apply(self, events: Iterable[Command]) -> ReferenceLedger:
        for event in events:
            outcome = self.ledger.apply(event, body_hash(event))
            self.outcomes.setdefault(event.event_id, outcome.outcome)
        return self

    def positions(self) -> dict[PositionKey, dict[str, int]]:
        return {
            key: {
                "on_hand": p.on_hand,
                "reserved": p.reserved,
                "damaged": p.damaged,
                "safety_stock": p.safety_stock,
                "version": p.version,
            }
            for key, p in self.ledger.positions.items()
            if p.version > 0
        }

    def movements_per_event(self) -> Counter[str]:
        return Counter(m.event_id for m in self.ledger.movements)

    def reservation_statuses(self) -> dict[str, str]:
        return {rid: r.status for (_, rid), r in self.ledger.reservations.items()}


def without_version(numbers: dict[PositionKey, dict[str, int]]) -> dict[PositionKey, dict[str, int]]:
    return {key: {k: v for k, v in n.items() if k != "version"} for key, n in numbers.items()}


# --- the worker and relay, run for real ---------------------------------------------------------------------


SRC = str(Path(stocksync.__file__).parents[1])
_STARTED: list[ServiceProcess] = []


def stop_service_processes() -> None:
    """Stop every service process still running: a test that failed half-way must not leave one behind."""
    while _STARTED:
        _STARTED.pop().stop()


class ServiceProcess:
    """``python -m stocksync.cli serve --role ...`` as a child process with its own environment and log file."""

    def __init__(self, roles: Sequence[str], database_url: str, nats_url: str, log_path: Path) -> None:
        self.roles = list(roles)
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "STOCKSYNC_DATABASE_URL": database_url,
            "STOCKSYNC_NATS_URL": nats_url,
            "STOCKSYNC_LOG_LEVEL": "info",
            "STOCKSYNC_HOME": str(log_path.parent / ".stocksync"),
            "STOCKSYNC_METRICS_PORT": "0",  # several processes on one machine: any free port each
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def command(self) -> list[str]:
        roles = [arg for role in self.roles for arg in ("--role", role)]
        return [sys.executable, "-m", "stocksync.cli", "serve", *roles]

    def start(self) -> ServiceProcess:
        assert not self.alive, "already running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.starts += 1
        if self not in _STARTED:
            _STARTED.append(self)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as when the machine or the OOM killer takes it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (SIGKILL if it will not go); its exit status."""
        return terminate(self.process, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def current_log(self) -> str:
        """What the process started last has logged."""
        return self.log().rpartition("--- start ")[2]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]


async def relay_leader(database_url: str, services: Sequence[ServiceProcess]) -> ServiceProcess | None:
    """The service whose relay holds the leader lock: the lock's backend, by its client port, to a process;
    over a unix socket (no port), the one whose current run logged that it leads."""
    rows = await fetch(
        database_url,
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1 AND l.database ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())",
        LEADER_LOCK,
    )
    if not rows:
        return None
    alive = [service for service in services if service.alive and service.process is not None]
    port = rows[0]["client_port"]
    if port is None or port < 0:
        leading = [service for service in alive if "relay_leading" in service.current_log()]
        return leading[0] if len(leading) == 1 else None
    for service in alive:
        assert service.process is not None
        local = {c.laddr.port for c in psutil.Process(service.process.pid).net_connections("tcp") if c.laddr}
        if port in local:
            return service
    return None


@asynccontextmanager
async def processes(*services: ServiceProcess) -> AsyncIterator[tuple[ServiceProcess, ...]]:
    """Start them; stop them whatever happens (kill as a last resort)."""
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in services:
            await asyncio.to_thread(service.stop)


@dataclass
class InProcess:
    """The worker and/or relay as tasks of this event loop, each part with its own engine and NATS client."""

    tasks: list[asyncio.Task] = field(default_factory=list)

    def assert_running(self) -> None:
        for task in self.tasks:
            if task.done():
                raise AssertionError(f"{task.get_name()} stopped: {task.exception()!r}")


@asynccontextmanager
async def in_process(
    database_url: str, nats_url: str, roles: Sequence[str] = ("worker", "relay"), **worker_options: Any
) -> AsyncIterator[InProcess]:
    stop = asyncio.Event()
    closers: list[Callable[[], Awaitable[Any]]] = []
    running = InProcess()
    try:
        for role in roles:
            engine = create_engine(database_url, pool_size=5)
            closers.append(engine.dispose)
            nc = await connect(nats_url, name=f"stocksync-{role}")
            closers.append(nc.close)
            part = (
                EventWorker(nc, LedgerService(engine), **worker_options)
                if role == "worker"
                else OutboxRelay(engine, nc, poll_s=0.2)
            )
            running.tasks.append(asyncio.create_task(part.run(stop), name=role))
        yield running
        running.assert_running()
    finally:
        stop.set()
        _, pending = await asyncio.wait(running.tasks, timeout=60) if running.tasks else (set(), set())
        for task in pending:
            await cancel_and_wait(task)
        for close in reversed(closers):
            try:
                await asyncio.wait_for(close(), timeout=30)
            except Exception:
                pass


async def invariant_violations(url: str, location_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Positions that break spec section 2 rules 1-2 in the committed state: on_hand, damaged and reserved
    each equal to the sum of their movements' deltas, and reserved equal to the held reservations' lines
    (an empty list when all hold)."""
    rows = await fetch(
        url,
        "SELECT p.location_id, p.sku, p.on_hand, p.reserved, p.damaged,"
        " coalesce(m.on_hand, 0) AS moved_on_hand, coalesce(m.reserved, 0) AS moved_reserved,"
        " coalesce(m.damaged, 0) AS moved_damaged, coalesce(h.qty, 0) AS held"
        " FROM positions p"
        " LEFT JOIN (SELECT location_id, sku, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved,"
        "   sum(damaged_delta) AS damaged FROM movements GROUP BY location_id, sku) m USING (location_id, sku)"
        " LEFT JOIN (SELECT r.location_id, l.sku, sum(l.qty) AS qty FROM reservations r"
        "   JOIN reservation_lines l USING (reservation_id) WHERE r.status = 'held'"
        "   GROUP BY r.location_id, l.sku) h USING (location_id, sku)"
        " WHERE p.location_id = ANY($1::text[])",
        list(location_ids),
    )
    return [
        dict(r)
        for r in rows
        if not (
            r["on_hand"] == r["moved_on_hand"]
            and r["damaged"] == r["moved_damaged"]
            and r["reserved"] == r["moved_reserved"] == r["held"]
        )
    ]


# -- a test's own database and nats-server ---------------------------------------------------------------


@dataclass
class Stack:
    database_url: str
    nats: NatsServer

    @property
    def nats_url(self) -> str:
        return self.nats.url


@pytest.fixture
def stack(fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]) -> Stack:
    """A database and a nats-server of the test's own, so stream contents and ledger rows are its alone."""
    return Stack(fresh_database(), nats_server_factory())


@pytest.fixture(autouse=True)
def _no_service_process_left_running() -> Iterator[None]:
    yield
    stop_service_processes()
