"""A stateful model test (issue 15, point 4): hypothesis drives the service over HTTP and NATS with every event
type, duplicates, conflicting re-uses of an id, events that occurred before a count arriving after it, and
reservation expiries on an injectable clock; after every step the positions read over HTTP equal those of a
small model written from the spec's rules alone (not the core), and the invariants of spec section 2 hold.

The service runs in this process (API over ASGI, the NATS worker as a task, the sweeper run once whenever the
clock moves), all on one ManualClock, against real PostgreSQL and a nats-server of the test's own. Hypothesis'
rules are synchronous, so the service's event loop runs on a thread of its own and each step waits for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from msgspec import structs
from nats.js import JetStreamContext

from stocksync.adapters.database import create_engine
from stocksync.clock import ManualClock
from stocksync.domain.events import Command, encode
from stocksync.http.app import create_app
from stocksync.messaging.topology import migrate_topology
from stocksync.messaging.worker import EventWorker
from stocksync.migrate import migrate_database_async
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger, LedgerService
from stocksync.service.sweeper import ExpirySweeper
from stocksync_client.connection import connect
from tests.support import NatsServer
from tests.support_ledger import (
    adjust,
    cancel,
    collect,
    count,
    receipt,
    reserve,
    return_,
    sale,
    unique,
)
from tests.support_nats import consumer_settled, invariant_violations, subject_of, wait_until

T = TypeVar("T")
SKUS = 3


# --- the model: spec section 2, written down on its own ------------------------------------------------------


@dataclass
class Stock:
    on_hand: int = 0
    reserved: int = 0
    damaged: int = 0
    safety_stock: int = 0
    version: int = 0
    last_count_at: datetime | None = None
    moved: list[tuple[datetime, int]] = field(default_factory=list)  # (occurred_at, on_hand delta)

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.reserved - self.safety_stock)  # rule 1

    def change(self, at: datetime, on_hand: int = 0, reserved: int = 0, damaged: int = 0) -> None:
        """Rules 2, 3, 9: one movement, version + 1; an on_hand change from before the latest count counts 0."""
        if on_hand and self.last_count_at is not None and at < self.last_count_at:
            on_hand = 0
        self.on_hand += on_hand
        self.reserved += reserved
        self.damaged += damaged
        self.version += 1
        self.moved.append((at, on_hand))

    def counted(self, at: datetime, counted: int) -> None:
        """Rule 9: on_hand is the count as of ``at`` plus what moved from then on; an older count moves nothing."""
        if self.last_count_at is not None and at <= self.last_count_at:
            self.change(at)
            return
        after = sum(delta for when, delta in self.moved if when >= at)
        delta = counted + after - self.on_hand
        self.on_hand += delta
        self.version += 1
        self.moved.append((at, delta))
        self.last_count_at = at


@dataclass
class Held:
    location_id: str
    lines: dict[str, int]
    expires_at: datetime
    status: str = "held"


@dataclass
class Model:
    locations: list[str]
    stock: dict[tuple[str, str], Stock] = field(default_factory=dict)
    recorded: dict[str, tuple[bytes, str, str | None]] = field(
        default_factory=dict
    )  # id -> body, first outcome
    # (location_id, reservation_id): the same id at another location is another reservation
    reservations: dict[tuple[str, str], Held] = field(default_factory=dict)

    def at(self, location_id: str, sku: str) -> Stock:
        return self.stock.setdefault((location_id, sku), Stock())

    def apply(self, event: Command, now: datetime) -> tuple[str, str | None]:
        """Rules 10 and 11: an id is applied once; a repeat answers the first outcome, another body conflicts."""
        body = encode(event)
        if event.event_id in self.recorded:
            first_body, outcome, error = self.recorded[event.event_id]
            if first_body != body:
                return "rejected", "event_id_conflict"
            return ("rejected", error) if outcome == "rejected" else ("duplicate", None)
        outcome, error = self._first(event, now)
        self.recorded[event.event_id] = (body, outcome, error)
        return outcome, error

    def _first(self, event: Command, now: datetime) -> tuple[str, str | None]:
        if event.location_id not in self.locations:
            return "rejected", "unknown_location"
        at = event.occurred_at
        if event.type in ("sale", "receipt"):
            sign = -1 if event.type == "sale" else 1
            for line in event.lines:
                self.at(event.location_id, line.sku).change(at, on_hand=sign * line.qty)  # rule 4: always
        elif event.type == "return":
            for line in event.lines:  # rule 8
                stock = self.at(event.location_id, line.sku)
                if line.disposition == "damaged":
                    stock.change(at, damaged=line.qty)
                else:
                    stock.change(at, on_hand=line.qty)
        elif event.type == "adjust":
            for line in event.lines:
                self.at(event.location_id, line.sku).change(at, on_hand=line.delta)
        elif event.type == "count":
            for line in event.lines:
                self.at(event.location_id, line.sku).counted(at, line.counted)
        elif event.type == "reserve":
            return self._reserve(event, now)
        else:
            return self._leave(event.reservation_id, event.location_id, event.type, at)
        return "applied", None

    def _reserve(self, event: Command, now: datetime) -> tuple[str, str | None]:
        """Rule 5: held whole if every line fits what is available, else rejected whole."""
        if (event.location_id, event.reservation_id) in self.reservations:
            return "rejected", "reservation_exists"
        lines = {line.sku: line.qty for line in event.lines}
        if any(qty > self.at(event.location_id, sku).available for sku, qty in lines.items()):
            return "rejected", "insufficient_stock"
        for sku, qty in lines.items():
            self.at(event.location_id, sku).change(event.occurred_at, reserved=qty)
        expires_at = now + timedelta(seconds=event.ttl_seconds)
        held = Held(event.location_id, lines, expires_at)
        self.reservations[(event.location_id, event.reservation_id)] = held
        return "applied", None

    def _leave(
        self, reservation_id: str, location_id: str, kind: str, at: datetime
    ) -> tuple[str, str | None]:
        """Rule 6: a hold leaves ``held`` once; the same transition again answers duplicate and moves nothing."""
        held = self.reservations.get((location_id, reservation_id))
        if held is None:
            return "rejected", "unknown_reservation"
        status = {"collect": "collected", "cancel": "cancelled", "expire": "expired"}[kind]
        if held.status == status:
            return "duplicate", None
        if held.status != "held":
            return "rejected", "reservation_not_held"
        for sku, qty in held.lines.items():
            self.at(location_id, sku).change(at, on_hand=-qty if kind == "collect" else 0, reserved=-qty)
        held.status = status
        return "applied", None

    def expire_due(self, now: datetime) -> None:
        """Rule 7: every hold past its expiry is expired (the sweeper's pass)."""
        for (location_id, rid), held in self.reservations.items():
            if held.status == "held" and held.expires_at <= now:
                self._leave(rid, location_id, "expire", now)


# --- the service, in this process on a loop of its own ---------------------------------------------------------


class Service:
    """API, worker and sweeper on one ManualClock, on an event loop running on its own thread."""

    def __init__(self, database_url: str, nats_url: str) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.clock = ManualClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        await migrate_database_async(self.database_url)
        await migrate_topology(self.nats_url)
        self.engine = create_engine(self.database_url, pool_size=5)
        self.admin_key = await create_key(self.engine, "admin", label="model test")
        app = create_app(
            engine=self.engine, ledger=GroupCommitLedger(self.engine, clock=self.clock), clock=self.clock
        )
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://stocksync.test",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        self.nc = await connect(self.nats_url, name="stocksync-model-test")
        self.js: JetStreamContext = self.nc.jetstream()
        self.sweeper = ExpirySweeper(self.engine, LedgerService(self.engine, clock=self.clock))
        self.stop_worker = asyncio.Event()
        worker = EventWorker(self.nc, LedgerService(self.engine, clock=self.clock), fetch_timeout_s=0.2)
        self.worker = asyncio.create_task(worker.run(self.stop_worker))

    def close(self) -> None:
        async def stop() -> None:
            self.stop_worker.set()
            await asyncio.wait_for(self.worker, 60)
            await self.http.aclose()
            await self.nc.close()
            await self.engine.dispose()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)

    # -- steps ---------------------------------------------------------------------------------------------

    async def post_event(self, event: Command) -> tuple[str, str | None]:
        answer = await self.http.post(
            "/v1/events", content=encode(event), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body["outcome"], body.get("error")

    async def publish(self, event: Command) -> None:
        """Over NATS, then until the worker has nothing pending or unacknowledged (it applied it)."""
        ack = await self.js.publish(
            subject_of(event), encode(event), headers={"Nats-Msg-Id": event.event_id}, timeout=30
        )
        assert ack.stream
        self._assert_worker_running()
        await wait_until(lambda: consumer_settled(self.js), interval=0.02, what="the worker settled")
        self._assert_worker_running()

    def _assert_worker_running(self) -> None:
        if self.worker.done():
            raise AssertionError(f"the worker stopped: {self.worker.exception()!r}")

    async def recorded(self, event_id: str) -> tuple[str, str | None]:
        """The event's recorded outcome, waited for: a settled consumer can still be a moment ahead of it."""

        async def outcome() -> httpx.Response | None:
            answer = await self.http.get(f"/v1/events/{event_id}")
            assert answer.status_code in (200, 404), answer.text
            return answer if answer.status_code == 200 else None

        answer = await wait_until(outcome, interval=0.02, what=f"event {event_id!r} recorded")
        body = answer.json()
        return body["outcome"], body.get("error")

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(path, json=body or {})

    async def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.put(path, json=body)

    async def positions(
        self, location_ids: list[str], skus: list[str]
    ) -> dict[tuple[str, str], dict[str, int]]:
        params = [("sku", sku) for sku in skus] + [("location_id", loc) for loc in location_ids]
        answer = await self.http.get("/v1/availability", params=params)
        assert answer.status_code == 200, answer.text
        return {(p["location_id"], p["sku"]): p for p in answer.json()["items"]}


@pytest.fixture
def service(fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer]):
    running = Service(fresh_database(), nats_server_factory().url)
    try:
        yield running
    finally:
        running.close()


# --- the machine ---------------------------------------------------------------------------------------------

channels = st.sampled_from(["http", "nats"])
offsets = st.integers(min_value=-600, max_value=0)  # seconds before the clock's now: late events, late counts


class Ledger(RuleBasedStateMachine):
    service: Service  # set by the test

    sent = Bundle("sent")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.locations = [unique("model-store") for _ in range(2)]
        self.skus = [unique("MODEL-SKU") for _ in range(SKUS)]
        self.model = Model(self.locations)
        self.seen_versions: dict[tuple[str, str], int] = {}
        for location_id in self.locations:
            answer = self.service.call(
                self.service.put(f"/v1/locations/{location_id}", {"kind": "store", "name": location_id})
            )
            assert answer.status_code == 200, answer.text

    @property
    def now(self) -> datetime:
        return self.service.clock.now

    def when(self, offset: int) -> datetime:
        return self.now + timedelta(seconds=offset)

    def send(self, event: Command, channel: str) -> Command:
        """Send over the channel; the service's outcome must be the model's."""
        first = event.event_id not in self.model.recorded
        expected = self.model.apply(event, self.now)
        if channel == "http":
            assert self.service.call(self.service.post_event(event)) == expected, event
        else:
            self.service.call(self.service.publish(event))
            if first:  # NATS answers nothing: the recorded outcome is what a till reads back
                assert self.service.call(self.service.recorded(event.event_id)) == expected, event
        return event

    def lines(self, data: st.DataObject, values: st.SearchStrategy[int]) -> dict[str, int]:
        skus = data.draw(st.lists(st.sampled_from(self.skus), min_size=1, max_size=SKUS, unique=True))
        return {sku: data.draw(values) for sku in skus}

    def location(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.locations))

    # -- every event type ------------------------------------------------------------------------------

    @rule(target=sent, data=st.data(), channel=channels, offset=offsets)
    def receive(self, data: st.DataObject, channel: str, offset: int) -> Command:
        lines = self.lines(data, st.integers(1, 20))
        return self.send(receipt(self.location(data), lines, at=self.when(offset)), channel)

    @rule(target=sent, data=st.data(), channel=channels, offset=offsets)
    def sell(self, data: st.DataObject, channel: str, offset: int) -> Command:
        lines = self.lines(data, st.integers(1, 8))
        return self.send(sale(self.location(data), lines, at=self.when(offset)), channel)

    @rule(target=sent, data=st.data(), channel=channels, offset=offsets, damaged=st.booleans())
    def take_back(self, data: st.DataObject, channel: str, offset: int, damaged: bool) -> Command:
        lines = self.lines(data, st.integers(1, 3))
        disposition = "damaged" if damaged else "restock"
        event = return_(self.location(data), lines, disposition=disposition, at=self.when(offset))
        return self.send(event, channel)

    @rule(target=sent, data=st.data(), channel=channels, offset=offsets)
    def correct(self, data: st.DataObject, channel: str, offset: int) -> Command:
        lines = self.lines(data, st.integers(-5, 5).filter(bool))
        return self.send(adjust(self.location(data), lines, at=self.when(offset)), channel)

    @rule(target=sent, data=st.data(), channel=channels, offset=offsets)
    def count_shelf(self, data: st.DataObject, channel: str, offset: int) -> Command:
        lines = self.lines(data, st.integers(0, 30))
        return self.send(count(self.location(data), lines, at=self.when(offset)), channel)

    @rule(target=holds, data=st.data(), channel=channels, ttl=st.sampled_from([60, 600, 7200]))
    def hold(self, data: st.DataObject, channel: str, ttl: int) -> tuple[str, str]:
        location_id = self.location(data)
        event = reserve(location_id, self.lines(data, st.integers(1, 6)), ttl_seconds=ttl, at=self.now)
        self.send(event, channel)
        return location_id, event.reservation_id

    @rule(target=sent, held=holds, channel=channels, collecting=st.booleans())
    def finish(self, held: tuple[str, str], channel: str, collecting: bool) -> Command:
        """Collect or cancel as an event (a hold that was rejected is unknown; a finished one answers again)."""
        build = collect if collecting else cancel
        return self.send(build(held[0], held[1], at=self.now), channel)

    @rule(held=holds, collecting=st.booleans())
    def finish_at_the_endpoint(self, held: tuple[str, str], collecting: bool) -> None:
        """The web shop's endpoints: 200 with the status, 404 unknown, 409 when the hold left otherwise."""
        location_id, rid = held
        action = "collect" if collecting else "cancel"
        outcome, error = self.model._leave(rid, location_id, action, self.now)
        answer = self.service.call(self.service.post(f"/v1/reservations/{rid}/{action}"))
        if outcome in ("applied", "duplicate"):
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == self.model.reservations[(location_id, rid)].status
        else:
            assert (answer.status_code, answer.json()["error"]) == (
                404 if error == "unknown_reservation" else 409,
                error,
            ), answer.text

    @rule(data=st.data(), qty=st.integers(0, 10))
    def set_buffer(self, data: st.DataObject, qty: int) -> None:
        location_id, sku = self.location(data), data.draw(st.sampled_from(self.skus))
        answer = self.service.call(
            self.service.put(f"/v1/locations/{location_id}/safety-stock/{sku}", {"qty": qty})
        )
        assert answer.status_code == 200, answer.text
        stock = self.model.at(location_id, sku)
        stock.change(self.now)
        stock.safety_stock = qty

    # -- duplicates, conflicts, time ---------------------------------------------------------------------

    @rule(event=sent, channel=channels)
    def deliver_again(self, event: Command, channel: str) -> None:
        self.send(event, channel)

    @rule(event=sent, channel=channels)
    def reuse_the_id(self, event: Command, channel: str) -> None:
        """The same id with another body: refused as a conflict, nothing moves (over NATS the stream's
        duplicate window may drop it first, which moves nothing either)."""
        self.send(structs.replace(event, reference=f"{event.reference or ''}-other"), channel)

    @rule(seconds=st.sampled_from([1, 30, 59, 61, 300, 601, 3600, 7201]))
    def time_passes(self, seconds: int) -> None:
        """The clock moves and the sweeper makes a pass, as it does every second in production."""
        self.service.clock.advance(seconds=seconds)
        self.service.call(self.service.sweeper.sweep_once())
        self.model.expire_due(self.now)

    # -- after every step --------------------------------------------------------------------------------

    @invariant()
    def the_ledger_is_the_models(self) -> None:
        read = self.service.call(self.service.positions(self.locations, self.skus))
        for key, position in read.items():
            stock = self.model.stock.get(key, Stock())
            expected = {
                "on_hand": stock.on_hand,
                "reserved": stock.reserved,
                "damaged": stock.damaged,
                "safety_stock": stock.safety_stock,
                "available": stock.available,
                "version": stock.version,
            }
            assert {k: position[k] for k in expected} == expected, key
            assert position["available"] == max(
                0, position["on_hand"] - position["reserved"] - position["safety_stock"]
            )
            assert position["version"] >= self.seen_versions.get(key, 0)
            self.seen_versions[key] = position["version"]

    @invariant()
    def every_position_is_its_movements(self) -> None:
        assert self.service.call(invariant_violations(self.service.database_url, self.locations)) == []


@pytest.mark.slow
def test_the_service_behaves_as_the_model_of_the_spec(service: Service) -> None:
    Ledger.service = service
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=True,
        ),
    )
