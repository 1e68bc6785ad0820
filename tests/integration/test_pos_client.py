"""The till's client against real NATS and PostgreSQL: nothing recorded is lost, nothing is applied twice,
and an event leaves the spool only when its outcome arrives.

Tests that stop NATS have a nats-server and a database of their own; the others share the session's, with
location ids of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from stocksync.adapters.database import create_engine
from stocksync.adapters.locations import upsert_locations
from stocksync.aio import cancel_and_wait
from stocksync.cli import main as cli_main
from stocksync.domain.events import QtyLine, decode_inbound
from stocksync.domain.model import Location
from stocksync.embedded.processes import free_port
from stocksync.messages import OutcomeMessage
from stocksync.messaging.topology import migrate_topology, worker_consumer
from stocksync.migrate import migrate_database_async
from stocksync.server import serve
from stocksync.settings import Settings
from stocksync.simulate import simulate
from stocksync.wire import IN_STREAM, OUT_STREAM
from stocksync_client import PosClient, SpoolInUse
from stocksync_client.connection import connect
from tests.support import NatsServer
from tests.support_ledger import sale
from tests.support_nats import fetch, wait_until

DEADLINE_S = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def running_service(
    database_url: str,
    nats_url: str,
    locations: Iterable[str] = (),
    roles: Sequence[str] = ("worker", "relay"),
) -> AsyncIterator[Settings]:
    """The NATS topology, the locations, and `serve` running ``roles`` in this event loop for the block.

    The worker's consumer gets a short ack_wait: a delivery the worker drops (it does when nats-py answers a
    fetch with "heartbeat value too large") comes back in seconds rather than a minute.
    """
    await migrate_topology(nats_url)
    nc = await connect(nats_url)
    try:
        await nc.jetstream().add_consumer(IN_STREAM, dataclasses.replace(worker_consumer(), ack_wait=3.0))
    finally:
        await nc.close()
    engine = create_engine(database_url, pool_size=1)
    try:
        stores = [Location(location_id=loc, kind="store", name=loc, pickup_enabled=True) for loc in locations]
        await upsert_locations(engine, stores)
    finally:
        await engine.dispose()
    settings = Settings(database_url=database_url, nats_url=nats_url, http_port=free_port(), metrics_port=0)
    task = asyncio.create_task(serve(settings, roles))
    try:
        yield settings
        assert not task.done(), f"serve stopped: {task.exception()!r}"
    finally:
        await cancel_and_wait(task)
        for signum in (signal.SIGINT, signal.SIGTERM):  # serve leaves its handlers installed
            asyncio.get_running_loop().remove_signal_handler(signum)


async def movement_event_ids(database_url: str, location_id: str) -> list[str]:
    """The event of every movement at the location, in the order the ledger wrote them."""
    query = "SELECT event_id FROM movements WHERE location_id = $1 ORDER BY id"
    return [row["event_id"] for row in await fetch(database_url, query, location_id)]


async def recorded_outcomes(database_url: str, location_id: str) -> dict[str, str]:
    rows = await fetch(
        database_url, "SELECT event_id, outcome FROM processed_events WHERE location_id = $1", location_id
    )
    return {row["event_id"]: row["outcome"] for row in rows}


async def stream_holds(nats_url: str, stream: str, subject: str, count: int) -> bool:
    nc = await connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values()) == count
    finally:
        await nc.close()


def seq_of(event_id: str) -> int:
    return int(event_id.rsplit(":", 1)[1])


def basket(n: int) -> list[QtyLine]:
    """Sale n: one to three lines, so movement counts show each line applied once."""
    return [QtyLine(sku=f"SKU-{k}", qty=1 + n % 2) for k in range(1 + n % 3)]


def assert_applied_once_in_order(movements: list[str], baskets: dict[str, list[QtyLine]]) -> None:
    assert Counter(movements) == {event_id: len(lines) for event_id, lines in baskets.items()}
    first_seen = list(dict.fromkeys(movements))
    assert first_seen == sorted(baskets, key=seq_of)


async def test_sales_while_nats_is_down_are_spooled_and_arrive_in_order_once_when_it_returns(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    database_url, server, loc = fresh_database(), nats_server_factory(), unique("store")
    await migrate_database_async(database_url)
    baskets: dict[str, list[QtyLine]] = {}

    async def sell_offline(pos: PosClient, count: int) -> None:
        slowest = 0.0
        for n in range(len(baskets), len(baskets) + count):
            started = time.monotonic()
            event_id = await pos.sell(basket(n), reference=f"receipt-{n}")
            slowest = max(slowest, time.monotonic() - started)
            baskets[event_id] = basket(n)
        assert pos.pending() == count
        assert slowest < 2.0, "selling waited for NATS"

    async with running_service(database_url, server.url, [loc]):
        server.stop()
        pos = await PosClient.open(server.url, loc, "till-1", tmp_path / "till.sqlite3")  # NATS down at start
        try:
            await sell_offline(pos, 30)
            assert await recorded_outcomes(database_url, loc) == {}
            server.start()
            await pos.wait_until_drained(DEADLINE_S)

            server.stop()  # and again while connected
            await sell_offline(pos, 30)
            server.start()
            await pos.wait_until_drained(DEADLINE_S)
        finally:
            await pos.close()
    assert await recorded_outcomes(database_url, loc) == dict.fromkeys(baskets, "applied")
    assert_applied_once_in_order(await movement_event_ids(database_url, loc), baskets)
    assert [seq_of(event_id) for event_id in baskets] == list(range(1, 61))


async def test_events_the_stream_lost_are_sent_again_until_their_outcome_arrives(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    """A nats-server that loses its store (as unsynced JetStream data can be) loses acknowledged events."""
    database_url, server, loc = fresh_database(), nats_server_factory(), unique("store")
    await migrate_database_async(database_url)
    spool = tmp_path / "spool.sqlite3"
    async with await PosClient.open(server.url, loc, "till-1", spool, resend_after_s=1) as pos:
        async with running_service(database_url, server.url, [loc]):
            first = await pos.sell(basket(0))
            await pos.wait_until_drained(DEADLINE_S)
        lost = [await pos.sell(basket(n)) for n in (1, 2, 3)]
        subject = f"stocksync.in.{loc}.sale"
        await wait_until(
            lambda: stream_holds(server.url, IN_STREAM, subject, 4),
            what="the sales acknowledged",
            timeout=DEADLINE_S,
        )

        server.stop()
        shutil.rmtree(server.store_dir / "jetstream")
        server.start()
        async with running_service(database_url, server.url):
            await pos.wait_until_drained(DEADLINE_S)
    assert await recorded_outcomes(database_url, loc) == dict.fromkeys([first, *lost], "applied")
    assert_applied_once_in_order(
        await movement_event_ids(database_url, loc), {e: basket(n) for n, e in enumerate([first, *lost])}
    )


async def test_a_publish_ack_is_not_enough_the_spool_keeps_an_event_until_its_outcome_arrives(
    fresh_database: Callable[[], str], nats_server_factory: Callable[[], NatsServer], tmp_path: Path
) -> None:
    database_url, server, loc = fresh_database(), nats_server_factory(), unique("store")
    await migrate_database_async(database_url)
    async with running_service(database_url, server.url, [loc], roles=["worker"]):  # no relay: no outcomes
        async with await PosClient.open(server.url, loc, "till-1", tmp_path / "spool.sqlite3") as pos:
            sold = [await pos.sell([QtyLine(sku="SKU-A", qty=1)]) for _ in range(3)]
            await wait_until(
                lambda: recorded_outcomes(database_url, loc),
                what="the ledger applying the sales",
                timeout=DEADLINE_S,
            )
            await asyncio.sleep(1.0)
            assert pos.pending() == 3

            async with running_service(database_url, server.url, roles=["relay"]):
                await pos.wait_until_drained(DEADLINE_S)
    assert await recorded_outcomes(database_url, loc) == dict.fromkeys(sold, "applied")


async def test_a_till_restarted_before_its_outcomes_learns_them_and_sends_nothing_twice(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    loc, spool = unique("store"), tmp_path / "till-7.sqlite3"
    subject = f"stocksync.in.{loc}.sale"
    await migrate_topology(nats_server.url)
    pos = await PosClient.open(nats_server.url, loc, "till-7", spool)
    try:
        baskets = {await pos.sell(basket(n)): basket(n) for n in range(5)}
        await wait_until(
            lambda: stream_holds(nats_server.url, IN_STREAM, subject, 5),
            what="the sales sent",
            timeout=DEADLINE_S,
        )
    finally:
        await pos.close()  # before any outcome: no worker runs yet
    assert pos.pending() == 5

    async with running_service(migrated_database_url, nats_server.url, [loc]):
        outcome_subject = f"stocksync.out.outcome.{loc}"
        await wait_until(
            lambda: stream_holds(nats_server.url, OUT_STREAM, outcome_subject, 5),
            what="the outcomes published while the till was off",
            timeout=DEADLINE_S,
        )
        heard: list[OutcomeMessage] = []
        async with await PosClient.open(
            nats_server.url, loc, "till-7", spool, resend_after_s=600, on_outcome=heard.append
        ) as pos:
            assert pos.pending() == 5
            await pos.wait_until_drained(DEADLINE_S)
            after_restart = await pos.sell([QtyLine(sku="SKU-0", qty=1)])
            await pos.wait_until_drained(DEADLINE_S)

    assert [(o.event_id, o.outcome) for o in heard] == [(e, "applied") for e in [*baskets, after_restart]]
    assert seq_of(after_restart) == 6
    baskets[after_restart] = [QtyLine(sku="SKU-0", qty=1)]
    assert_applied_once_in_order(await movement_event_ids(migrated_database_url, loc), baskets)


async def test_another_stores_till_sending_this_tills_next_id_first_does_not_hold_up_its_sale(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Rule 10 at the stream: a till's event ids are predictable (location, till, sequence), and STOCKSYNC_IN
    de-duplicates stream-wide by ``Nats-Msg-Id``. Store A publishing B's next id with that header just before B
    must not make the stream drop B's sale: the client sends no ``Nats-Msg-Id``, so nothing it sends can match.
    With resends an hour away, a dropped first send would leave the sale unanswered."""
    store_a, store_b = unique("store"), unique("store")
    async with running_service(migrated_database_url, nats_server.url, [store_a, store_b]):
        async with await PosClient.open(
            nats_server.url, store_b, "till-1", tmp_path / "b.sqlite3", resend_after_s=3600
        ) as pos:
            next_id = f"{store_b}:till-1:000001"
            claim = sale(store_a, {"SKU-A": 1}, event_id=next_id)
            nc = await connect(nats_server.url)
            try:
                ack = await nc.jetstream().publish(
                    f"stocksync.in.{store_a}.sale",
                    msgspec.json.encode(claim),
                    headers={"Nats-Msg-Id": next_id},
                )
                sold = await pos.sell([QtyLine(sku="SKU-B", qty=2)])
                await pos.wait_until_drained(DEADLINE_S)
            finally:
                await nc.close()

    assert ack.duplicate is None and sold == next_id
    assert await movement_event_ids(migrated_database_url, store_b) == [next_id]


async def test_a_rejected_event_leaves_the_spool_and_is_kept_aside(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    known, unknown = unique("store"), unique("nowhere")
    async with running_service(migrated_database_url, nats_server.url, [known]):
        async with await PosClient.open(nats_server.url, unknown, "till-1", tmp_path / "s.sqlite3") as pos:
            refused = await pos.return_(
                [QtyLine(sku="SKU-R", qty=2)], disposition="damaged", reference="rma-1"
            )
            await pos.wait_until_drained(DEADLINE_S)
            [rejected] = await pos.rejected()
    assert (rejected.event.event_id, rejected.error) == (refused, "unknown_location")
    assert rejected.event.reference == "rma-1"
    assert [(ln.sku, ln.qty, ln.disposition) for ln in rejected.event.lines] == [("SKU-R", 2, "damaged")]
    assert await recorded_outcomes(migrated_database_url, unknown) == {refused: "rejected"}


async def test_the_journal_keeps_settled_events_for_the_nightly_reconciliation(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc, spool = unique("store"), tmp_path / "till.sqlite3"
    async with running_service(migrated_database_url, nats_server.url, [loc]):
        async with await PosClient.open(nats_server.url, loc, "till-1", spool) as pos:
            sold = [await pos.sell(basket(n)) for n in range(5)]
            await pos.wait_until_drained(DEADLINE_S)
            assert pos.pending() == 0
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("STOCKSYNC_HOME", str(tmp_path / "home"))
    assert cli_main(["pos", "journal", "--spool", str(spool), "--out", str(journal)]) == 0
    events = [decode_inbound(line) for line in journal.read_text().splitlines()]
    assert [event.event_id for event in events] == sold  # settled, yet still in the journal, in order
    assert [[(ln.sku, ln.qty) for ln in event.lines] for event in events] == [
        [(ln.sku, ln.qty) for ln in basket(n)] for n in range(5)
    ]


async def test_the_spool_refuses_invalid_sales_a_second_client_and_another_till(tmp_path: Path) -> None:
    spool, offline = tmp_path / "spool.sqlite3", f"nats://127.0.0.1:{free_port()}"
    async with await PosClient.open(offline, "store-x", "till-1", spool) as pos:
        with pytest.raises(msgspec.ValidationError, match=r"lines\[0\].qty"):
            await pos.sell([QtyLine(sku="SKU-1", qty=0)])
        with pytest.raises(SpoolInUse):
            await PosClient.open(offline, "store-x", "till-1", spool)
        assert seq_of(await pos.sell([QtyLine(sku="SKU-1", qty=1)])) == 1  # the refused sale took no number
        assert pos.pending() == 1
    with pytest.raises(ValueError, match="belongs to till 'till-1'"):
        await PosClient.open(offline, "store-x", "till-2", spool)
    async with await PosClient.open(offline, "store-x", "till-1", spool) as pos:
        assert pos.pending() == 1
        assert seq_of(await pos.sell([QtyLine(sku="SKU-1", qty=1)])) == 2


async def test_pos_simulate_rings_up_transactions_and_hears_every_outcome(
    migrated_database_url: str, nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loc = unique("store")
    async with running_service(migrated_database_url, nats_server.url, [loc]) as settings:
        status = await simulate(
            settings,
            location_id=loc,
            till_id="till-9",
            rate=100,
            count=20,
            spool=tmp_path / "s.sqlite3",
            skus=["SKU-1", "SKU-2", "SKU-3"],
            wait_s=DEADLINE_S,
            console=Console(file=io.StringIO()),
        )
    assert status == 0
    assert list((await recorded_outcomes(migrated_database_url, loc)).values()) == ["applied"] * 20
    summary = capsys.readouterr().out
    assert "applied   │ 20" in summary and "pending   │ 0" in summary
