"""`stocksync reconcile` end to end: each kind of discrepancy planted in the database or the bucket by hand, and
the report must name it; a clean ledger exits 0; a store count file trues the ledger once.

Every run scans everything, so each test has a database and a nats-server of its own. The command runs in
process (`stocksync.cli.main`, on a thread: it runs its own event loop) against those servers.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.js.kv import KeyValue

from stocksync.adapters.bucket import sourced
from stocksync.adapters.bulk import seed_bulk
from stocksync.adapters.channels import put_channel
from stocksync.adapters.database import create_engine
from stocksync.adapters.reconciliation import STUCK_BATCH
from stocksync.cli import main
from stocksync.domain.channels import Channel
from stocksync.domain.events import Command, SetSafetyStock, encode
from stocksync.embedded.nats import nats_server_binary
from stocksync.embedded.processes import free_port, terminate
from stocksync.http.app import create_app
from stocksync.messaging.relay import OutboxRelay
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger, LedgerService
from stocksync.service.reconciliation import run as run_module
from stocksync.wire import AVAILABILITY_BUCKET, CHANNEL_BUCKET
from tests.support import NatsServer, run_sql
from tests.support_ledger import at, receipt, reserve, sale, unique
from tests.support_nats import (
    in_process,
    invariant_violations,
    outcomes,
    prepare,
    publish_events,
    subject_of,
    unrelayed,
    wait_until,
)


@dataclasses.dataclass
class Stack:
    database_url: str
    nats: NatsServer
    home: Path

    @property
    def nats_url(self) -> str:
        return self.nats.url


@pytest.fixture
def stack(
    fresh_database: Callable[[], str],
    nats_server_factory: Callable[[], NatsServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Stack:
    made = Stack(fresh_database(), nats_server_factory(), tmp_path)
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", made.database_url)
    monkeypatch.setenv("STOCKSYNC_NATS_URL", made.nats_url)
    monkeypatch.setenv("STOCKSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STOCKSYNC_LOG_LEVEL", "warning")
    return made


@dataclasses.dataclass
class Run:
    code: int
    report: dict[str, Any]
    output: str

    def named(self, kind: str) -> list[tuple[str | None, str | None]]:
        return sorted(((f["location_id"], f["sku"]) for f in self.findings(kind)), key=str)

    def findings(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.report.get("findings", []) if f["kind"] == kind]

    @property
    def kinds(self) -> set[str]:
        return {f["kind"] for f in self.report.get("findings", [])}


async def reconcile(stack: Stack, *args: str, capsys: pytest.CaptureFixture | None = None) -> Run:
    """``stocksync reconcile`` with a JSON report (and ``--grace-seconds 0`` unless given)."""
    report = stack.home / "reports" / f"{unique('run')}.json"
    grace = [] if "--grace-seconds" in args else ["--grace-seconds", "0"]
    code = await asyncio.to_thread(main, ["reconcile", *args, *grace, "--report", str(report)])
    output = capsys.readouterr().err if capsys else ""
    return Run(code, json.loads(report.read_text()) if report.exists() else {}, " ".join(output.split()))


# -- setting up a ledger (the normal path) and planting what goes wrong (behind its back) ----------------------


@asynccontextmanager
async def ledger(stack: Stack) -> AsyncIterator[LedgerService]:
    engine = create_engine(stack.database_url, pool_size=2)
    try:
        yield LedgerService(engine)
    finally:
        await engine.dispose()


async def apply(stack: Stack, *events: Command) -> None:
    async with ledger(stack) as service:
        for start in range(0, len(events), 100):
            await service.apply(list(events[start : start + 100]))


async def relay_all(stack: Stack) -> None:
    """What a running relay does: publish every outbox row; then the buckets have sourced them."""
    engine = create_engine(stack.database_url, pool_size=2)
    nc = await nats.connect(stack.nats_url)
    try:
        relay = OutboxRelay(engine, nc)
        while await relay.relay_once():
            pass
        for name in (AVAILABILITY_BUCKET, CHANNEL_BUCKET):
            assert await sourced(nc.jetstream(), name)
    finally:
        await nc.close()
        await engine.dispose()


@asynccontextmanager
async def bucket(stack: Stack) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(stack.nats_url)
    try:
        yield await nc.jetstream().key_value(AVAILABILITY_BUCKET)
    finally:
        await nc.close()


def sql(stack: Stack, *statements: str) -> list:
    return run_sql(stack.database_url, *statements)


async def stocked(stack: Stack, stock: dict[str, dict[str, int]]) -> None:
    """Locations with receipts at T0, everything relayed: a clean ledger to plant discrepancies in."""
    await prepare(stack.database_url, stack.nats_url, stock)
    await apply(stack, *(receipt(loc, lines) for loc, lines in stock.items()))
    await relay_all(stack)


def movements(stack: Stack) -> set[tuple]:
    return {tuple(r) for r in sql(stack, "SELECT id, event_id, on_hand_delta, reserved_delta FROM movements")}


# -- a clean ledger ------------------------------------------------------------------------------------------


async def test_a_clean_ledger_exits_0_with_an_empty_report(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [loc])
    events = [receipt(loc, {sku: 10}), sale(loc, {sku: 2}, at=1), reserve(loc, {sku: 3}, at=2)]
    async with in_process(stack.database_url, stack.nats_url) as running:
        nc = await nats.connect(stack.nats_url)
        for event in events:
            await nc.jetstream().publish(
                subject_of(event), encode(event), headers={"Nats-Msg-Id": event.event_id}
            )
        await nc.close()
        await wait_until(lambda: _count(outcomes(stack.database_url, [loc]), len(events)), what="all applied")
        await wait_until(lambda: _none(unrelayed(stack.database_url)), what="all relayed")
        running.assert_running()

    run = await reconcile(stack)

    assert (run.code, run.report["findings"]) == (0, [])
    summary = run.report["summary"]
    assert summary["checked"] == {"positions": 1, "movements": 3, "inbound_messages": 3, "bucket_entries": 1}
    assert summary["exit_code"] == 0 and summary["findings"] == {}


async def _count(awaitable, n: int) -> bool:
    return len(await awaitable) == n


async def _has(awaitable, key: str) -> bool:
    return key in await awaitable


async def _all(awaitable, keys: set[str]) -> bool:
    return keys <= set(await awaitable)


async def _none(awaitable) -> bool:
    return await awaitable == 0


# -- 1. ledger integrity ----------------------------------------------------------------------------------------


async def test_a_position_edited_behind_the_ledgers_back_is_named_and_exits_1(
    stack: Stack, tmp_path: Path
) -> None:
    loc, edited, untouched = unique("store"), unique("SKU"), unique("SKU")
    await stocked(stack, {loc: {edited: 10, untouched: 5}})
    sql(stack, f"UPDATE positions SET on_hand = on_hand + 3 WHERE location_id = '{loc}' AND sku = '{edited}'")

    csv_report = tmp_path / "findings.csv"
    run = await reconcile(stack, "--report", str(csv_report))

    assert run.code == 1
    [mismatch] = run.findings("on_hand_mismatch")
    assert (mismatch["location_id"], mismatch["sku"], mismatch["expected"], mismatch["actual"]) == (
        loc,
        edited,
        10,
        13,
    )
    assert run.kinds == {"on_hand_mismatch", "kv_stale"}  # the bucket still says 10, as the movements do
    with csv_report.open() as rows:
        written = list(csv.DictReader(rows))
    assert [(r["kind"], r["location_id"], r["sku"], r["expected"], r["actual"]) for r in written] == [
        (f["kind"], f["location_id"], f["sku"], str(f["expected"]), str(f["actual"]))
        for f in run.report["findings"]
    ]


async def test_version_and_held_lines_are_checked_too(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    await apply(stack, reserve(loc, {sku: 4}, reservation_id=(rid := unique("res"))))
    await relay_all(stack)
    sql(
        stack,
        f"UPDATE positions SET version = version + 1 WHERE location_id = '{loc}'",
        f"UPDATE reservation_lines SET qty = 1 WHERE reservation_id = '{rid}'",
    )

    run = await reconcile(stack)

    assert run.code == 1
    assert run.named("version_mismatch") == [(loc, sku)]
    assert [(f["expected"], f["actual"]) for f in run.findings("reserved_mismatch")] == [(1, 4)]


# -- 2. reservations ------------------------------------------------------------------------------------------


async def test_an_overdue_held_reservation_is_named_with_its_store(stack: Stack) -> None:
    loc, sku, rid = unique("store"), unique("SKU"), unique("res")
    await stocked(stack, {loc: {sku: 10}})
    await apply(stack, reserve(loc, {sku: 2}, reservation_id=rid))
    await relay_all(stack)
    sql(
        stack,
        f"UPDATE reservations SET expires_at = now() - interval '1 hour' WHERE reservation_id = '{rid}'",
    )

    run = await reconcile(stack)

    assert run.code == 1
    [overdue] = run.findings("reservation_overdue")
    assert (overdue["location_id"], overdue["sku"], overdue["reservation_id"]) == (loc, sku, rid)
    assert run.report["summary"]["by_store"] == {"reservation_overdue": {loc: 1}}


async def test_one_reservation_id_at_two_stores_is_checked_and_repaired_as_two(stack: Stack) -> None:
    """A reservation is its location and id: each store's held lines count against its own position, and
    only the overdue one of the two is named and expired."""
    late, fine, sku, rid = unique("store"), unique("store"), unique("SKU"), unique("res")
    await stocked(stack, {late: {sku: 10}, fine: {sku: 10}})
    await apply(
        stack, reserve(late, {sku: 2}, reservation_id=rid), reserve(fine, {sku: 3}, reservation_id=rid)
    )
    await relay_all(stack)
    sql(
        stack,
        "UPDATE reservations SET expires_at = now() - interval '1 hour'"
        f" WHERE reservation_id = '{rid}' AND location_id = '{late}'",
    )

    repair = await reconcile(stack, "--repair")

    [overdue] = repair.findings("reservation_overdue")
    assert (overdue["location_id"], overdue["reservation_id"], overdue["repaired"]) == (late, rid, True)
    assert repair.report["summary"]["findings"] == {"reservation_overdue": 1}
    statuses = sql(stack, f"SELECT location_id, status FROM reservations WHERE reservation_id = '{rid}'")
    assert dict(map(tuple, statuses)) == {late: "expired", fine: "held"}


async def test_reservations_a_sale_left_uncovered_are_at_risk_by_store(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    older, younger = unique("res"), unique("res")
    await stocked(stack, {loc: {sku: 5}})
    await apply(stack, reserve(loc, {sku: 2}, reservation_id=older))
    await apply(stack, reserve(loc, {sku: 2}, reservation_id=younger))
    await apply(stack, sale(loc, {sku: 3}, at=5))  # rule 4: applied, on_hand 2 < reserved 4
    await relay_all(stack)

    run = await reconcile(stack)

    assert run.code == 1
    assert [(f["sku"], f["reservation_id"], f["actual"]) for f in run.findings("reservation_at_risk")] == [
        (sku, younger, 2)
    ]
    assert run.report["summary"]["by_store"] == {"reservation_at_risk": {loc: 1}}


# -- 3. no event lost ------------------------------------------------------------------------------------------


async def test_an_inbound_message_without_an_outcome_is_named(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    lost = sale(loc, {sku: 1}, at=5)
    nc = await nats.connect(stack.nats_url)
    await nc.jetstream().publish(subject_of(lost), encode(lost), headers={"Nats-Msg-Id": lost.event_id})
    await nc.close()  # no worker runs: it will have no outcome

    run = await reconcile(stack)

    assert run.code == 1
    [finding] = run.findings("event_without_outcome")
    assert (finding["location_id"], finding["sku"]) == (loc, sku)
    assert lost.event_id in finding["detail"] and "not acknowledged" in finding["detail"]


async def test_an_event_id_recorded_at_another_store_is_no_outcome_of_this_one(
    stack: Stack, tmp_path: Path
) -> None:
    """Rule 10: a message (or journal line) of store B is matched to B's record, not to A's of the same id."""
    store_a, store_b, sku = unique("store"), unique("store"), unique("SKU")
    await stocked(stack, {store_a: {sku: 10}, store_b: {sku: 10}})
    claimed = sale(store_a, {sku: 1}, at=5)
    lost = sale(store_b, {sku: 2}, at=6, event_id=claimed.event_id)
    await apply(stack, claimed)
    await relay_all(stack)
    nc = await nats.connect(stack.nats_url)
    await nc.jetstream().publish(subject_of(lost), encode(lost), headers={"Nats-Msg-Id": lost.event_id})
    await nc.close()  # no worker runs: store B's sale has no outcome
    journal = tmp_path / "till-b.jsonl"
    journal.write_bytes(encode(lost) + b"\n")

    run = await reconcile(stack, "--pos-journal", str(journal))

    assert run.code == 1
    [finding] = run.findings("event_without_outcome")
    assert (finding["location_id"], finding["sku"]) == (store_b, sku)
    [missing] = run.findings("journal_event_without_outcome")
    assert missing["location_id"] == store_b


async def test_a_message_the_worker_acknowledged_whose_outcome_is_gone_is_lost(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    sold = sale(loc, {sku: 1}, at=5)
    async with in_process(stack.database_url, stack.nats_url):
        nc = await nats.connect(stack.nats_url)
        await nc.jetstream().publish(subject_of(sold), encode(sold), headers={"Nats-Msg-Id": sold.event_id})
        await nc.close()
        await wait_until(
            lambda: _has(outcomes(stack.database_url, [loc]), sold.event_id), what="the sale applied"
        )
        await wait_until(lambda: _none(unrelayed(stack.database_url)), what="all relayed")
    sql(stack, f"DELETE FROM processed_events WHERE event_id = '{sold.event_id}'")

    run = await reconcile(stack)

    assert run.code == 1 and run.kinds == {"event_without_outcome"}
    [finding] = run.findings("event_without_outcome")
    assert (finding["location_id"], finding["sku"]) == (loc, sku) and finding["detail"].endswith("lost")


async def test_dead_letters_account_for_their_message_and_are_reported_once(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    async with in_process(stack.database_url, stack.nats_url, roles=("worker",)):
        nc = await nats.connect(stack.nats_url)
        await nc.jetstream().publish(f"stocksync.in.{loc}.sale", b"{not json")
        await nc.close()
        await wait_until(lambda: _dead_letters(stack), what="the poison message dead-lettered")

    first = await reconcile(stack)
    second = await reconcile(stack)

    assert first.code == 1 and first.kinds == {"dead_letter"}
    [letter] = first.findings("dead_letter")
    assert letter["location_id"] == loc and "undecodable" in letter["detail"]
    assert first.report["summary"]["dead_letters"]["new_codes"] == {"undecodable": 1}
    assert (second.code, second.report["findings"]) == (0, [])
    assert second.report["summary"]["dead_letters"] == {
        "retained": 1,
        "codes": {"undecodable": 1},
        "new_since_last_run": 0,
        "new_codes": {},
    }


async def _dead_letters(stack: Stack) -> bool:
    nc = await nats.connect(stack.nats_url)
    try:
        return (await nc.jetstream().stream_info("STOCKSYNC_DLQ")).state.messages == 1
    finally:
        await nc.close()


async def test_a_pos_journal_event_without_an_outcome_is_named(stack: Stack, tmp_path: Path) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    spooled = [sale(loc, {sku: 1}, at=n) for n in range(3)]
    await apply(stack, *spooled[:2])
    await relay_all(stack)
    journal = tmp_path / "till-1.jsonl"
    journal.write_bytes(b"\n".join(encode(event) for event in spooled) + b"\n")

    run = await reconcile(stack, "--pos-journal", str(journal))

    assert run.code == 1
    [missing] = run.findings("journal_event_without_outcome")
    assert missing["location_id"] == loc and spooled[2].event_id in missing["detail"]
    assert "journal line 3" in missing["detail"]


async def test_a_journal_line_that_is_no_event_stops_the_run_naming_it(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    await prepare(stack.database_url, stack.nats_url, [])
    journal = tmp_path / "till-1.jsonl"
    journal.write_text('{"event_id": "e-1"}\n{"lines": []}\n')

    run = await reconcile(stack, "--pos-journal", str(journal), capsys=capsys)

    assert run.code == 2 and f"{journal} line 2" in run.output


# -- 4. outbox and bucket --------------------------------------------------------------------------------------


async def test_a_stale_and_a_missing_bucket_entry_are_named(stack: Stack) -> None:
    loc, stale, missing = unique("store"), unique("SKU"), unique("SKU")
    await stocked(stack, {loc: {stale: 10, missing: 5}})
    async with bucket(stack) as kv:
        entry = msgspec.json.decode((await kv.get(f"{loc}.{stale}")).value)
        await kv.put(f"{loc}.{stale}", msgspec.json.encode({**entry, "on_hand": 12, "available": 12}))
        await kv.delete(f"{loc}.{missing}")

    run = await reconcile(stack)

    assert run.code == 1
    assert run.named("kv_stale") == [(loc, stale)]
    assert run.named("kv_missing") == [(loc, missing)]


async def test_a_stuck_outbox_row_is_named_and_its_position_is_left_to_the_grace(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    await apply(stack, sale(loc, {sku: 1}, at=5))  # no relay runs: its outbox rows wait
    sql(stack, "UPDATE outbox SET created_at = now() - interval '1 hour' WHERE relayed_at IS NULL")

    run = await reconcile(stack, "--grace-seconds", "300")

    assert run.code == 1
    assert (loc, sku) in run.named("outbox_stuck")
    assert run.kinds == {"outbox_stuck"}  # the bucket is behind a change made within the grace: not stale yet


async def test_every_message_of_more_stuck_bundles_than_one_read_holds_is_named_and_repaired(
    stack: Stack,
) -> None:
    """A transaction's messages are one outbox row; the check reads stuck rows a few dozen at a time
    (`STUCK_BATCH`), so more transactions than that span several reads."""
    loc = unique("store")
    skus = [unique("SKU") for _ in range(STUCK_BATCH + 10)]
    await stocked(stack, {loc: dict.fromkeys(skus, 10)})
    for sku in skus:  # one transaction each: its availability and its outcome, one bundle
        await apply(stack, sale(loc, {sku: 1}, at=5))
    sql(stack, "UPDATE outbox SET created_at = now() - interval '1 hour' WHERE relayed_at IS NULL")

    repair = await reconcile(stack, "--repair", "--grace-seconds", "300")
    again = await reconcile(stack, "--grace-seconds", "300")

    stuck = repair.findings("outbox_stuck")
    assert len(stuck) == 2 * len(skus) and all(f["repaired"] for f in stuck)
    assert {sku for _, sku in repair.named("outbox_stuck")} == {*skus, None}  # an outcome names no sku
    assert (again.code, again.report["findings"]) == (0, [])


async def test_an_entry_behind_a_relayed_change_is_stale_however_recent(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    async with bucket(stack) as kv:
        older = (await kv.get(f"{loc}.{sku}")).value
    await apply(stack, sale(loc, {sku: 1}, at=5))
    await relay_all(stack)  # the relay published version 2 and marked its rows ...
    async with bucket(stack) as kv:
        await kv.put(f"{loc}.{sku}", older)  # ... and the bucket went back to version 1

    run = await reconcile(stack, "--grace-seconds", "300")  # right away: the change is seconds old

    assert run.code == 1
    found = [(f["location_id"], f["sku"], f["expected"], f["actual"]) for f in run.findings("kv_stale")]
    assert found == [(loc, sku, 2, 1)] and run.kinds == {"kv_stale"}  # named once


@pytest.mark.parametrize("grace", ["300", "0"])
async def test_a_change_not_yet_relayed_is_not_a_stale_entry(stack: Stack, grace: str) -> None:
    loc, sku, missing = unique("store"), unique("SKU"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    await apply(stack, sale(loc, {sku: 1}, at=5), receipt(loc, {missing: 3}, at=6))  # no relay runs

    run = await reconcile(stack, "--grace-seconds", grace)

    # Within the grace nothing is due; past it the unrelayed rows are outbox_stuck, named once, not kv_*.
    assert run.kinds <= {"outbox_stuck"}
    assert run.code == (0 if grace == "300" else 1)


async def test_repair_fixes_the_repairable_kinds_and_a_second_run_is_clean(stack: Stack) -> None:
    loc, rid = unique("store"), unique("res")
    held, sold, stale, missing = (unique("SKU") for _ in range(4))
    await stocked(stack, {loc: {held: 10, sold: 4, stale: 3, missing: 2}})
    await apply(stack, reserve(loc, {held: 2}, reservation_id=rid))
    await relay_all(stack)
    sql(
        stack,
        f"UPDATE reservations SET expires_at = now() - interval '1 hour' WHERE reservation_id = '{rid}'",
    )
    await apply(stack, sale(loc, {sold: 1}, at=5))
    sql(stack, "UPDATE outbox SET created_at = now() - interval '1 hour' WHERE relayed_at IS NULL")
    async with bucket(stack) as kv:
        entry = msgspec.json.decode((await kv.get(f"{loc}.{stale}")).value)
        await kv.put(f"{loc}.{stale}", msgspec.json.encode({**entry, "damaged": 1}))
        await kv.delete(f"{loc}.{missing}")
    before = movements(stack)

    repair = await reconcile(stack, "--repair")
    again = await reconcile(stack)

    summary = repair.report["summary"]
    assert repair.code == 1
    assert summary["findings"] == {
        "kv_missing": 1,
        "kv_stale": 1,
        "outbox_stuck": 2,
        "reservation_overdue": 1,
    }
    assert summary["repaired"] == summary["findings"]
    assert all(f["repaired"] for f in repair.report["findings"])
    assert (again.code, again.report["findings"]) == (0, [])
    after = movements(stack)
    assert before < after  # nothing edited or removed; the expiry added its own movement
    assert {m[1] for m in after - before} == {f"expire:{rid}"}
    assert sql(stack, f"SELECT status FROM reservations WHERE reservation_id = '{rid}'")[0][0] == "expired"


async def test_repair_never_touches_a_position_that_disagrees_with_its_movements(stack: Stack) -> None:
    loc, sku = unique("store"), unique("SKU")
    await stocked(stack, {loc: {sku: 10}})
    sql(stack, f"UPDATE positions SET on_hand = 99 WHERE location_id = '{loc}'")
    before = movements(stack)

    run = await reconcile(stack, "--repair")

    assert run.code == 1 and not run.findings("on_hand_mismatch")[0]["repaired"]
    assert movements(stack) == before
    assert sql(stack, f"SELECT on_hand FROM positions WHERE location_id = '{loc}'")[0][0] == 99


# -- 5. store counts ------------------------------------------------------------------------------------------------

COUNTED_AT = at(30)  # T0 + 30 minutes


def write_counts(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    columns = columns or ("location_id", "sku", "counted", "counted_at", "cost")
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclasses.dataclass
class Shop:
    """1,000 positions in two stores, each with 10..19 received at T0, 1 sold at T0+10 and 2 sold after the count."""

    stores: tuple[str, str]
    skus: list[str]

    def positions(self) -> list[tuple[str, str, int]]:
        """(location, sku, on_hand as of the count)."""
        return [(loc, sku, 10 + n % 10 - 1) for loc in self.stores for n, sku in enumerate(self.skus)]


async def shop(stack: Stack) -> Shop:
    made = Shop((unique("store"), unique("store")), [f"SKU-{n:04d}" for n in range(500)])
    await prepare(stack.database_url, stack.nats_url, made.stores)
    for loc in made.stores:
        await apply(
            stack,
            receipt(loc, {sku: 10 + n % 10 for n, sku in enumerate(made.skus)}),
            sale(loc, {sku: 1 for sku in made.skus}, at=10),
            sale(loc, {sku: 2 for sku in made.skus}, at=45),  # after the count: not the count's business
        )
    await relay_all(stack)
    return made


def counts_rows(made: Shop, differ: set[int]) -> list[dict[str, Any]]:
    """One row per position, counted as the ledger had it, except the rows in ``differ`` (by index)."""
    return [
        {
            "location_id": loc,
            "sku": sku,
            "counted": as_of + (3 if i % 2 else -2) * (i in differ),
            "counted_at": COUNTED_AT.isoformat(),
            "cost": "2.50",
        }
        for i, (loc, sku, as_of) in enumerate(made.positions())
    ]


DIFFER = {i * 33 for i in range(30)}  # 30 of the 1,000 rows


async def test_a_counts_file_reports_exactly_the_rows_that_differ_valued_at_cost(
    stack: Stack, tmp_path: Path
) -> None:
    made = await shop(stack)
    rows = counts_rows(made, DIFFER)
    counts = write_counts(tmp_path / "counts.csv", rows)

    run = await reconcile(stack, "--counts", str(counts))

    assert run.code == 1 and run.kinds == {"count_difference"}
    expected = sorted((rows[i]["location_id"], rows[i]["sku"]) for i in DIFFER)
    assert run.named("count_difference") == expected
    value = sum(Decimal(str(f["value_at_cost"])) for f in run.findings("count_difference"))
    assert value == sum(Decimal("2.50") * (3 if i % 2 else -2) for i in DIFFER)
    assert run.report["summary"]["counts"]["rows"] == 1000


async def test_apply_twice_moves_stock_once(stack: Stack, tmp_path: Path) -> None:
    made = await shop(stack)
    rows = counts_rows(made, DIFFER)
    counts = write_counts(tmp_path / "counts.csv", rows)
    before = {(r[0], r[1]): r[2] for r in sql(stack, "SELECT location_id, sku, on_hand FROM positions")}

    first = await reconcile(stack, "--counts", str(counts), "--apply")
    moved = {(r[0], r[1]): r[2] for r in sql(stack, "SELECT location_id, sku, on_hand FROM positions")}
    await relay_all(stack)  # as the running relay would, so the second run has nothing else to say
    second = await reconcile(stack, "--counts", str(counts), "--apply")

    assert first.code == 1 and len(first.findings("count_difference")) == 30
    assert all(f["repaired"] for f in first.findings("count_difference"))
    assert first.report["summary"]["counts"]["applied"] == 30
    changed = {key: moved[key] - before[key] for key in before if moved[key] != before[key]}
    assert changed == {
        (rows[i]["location_id"], rows[i]["sku"]): rows[i]["counted"] - made.positions()[i][2] for i in DIFFER
    }
    assert (second.code, second.report["findings"]) == (0, [])
    assert {
        (r[0], r[1]): r[2] for r in sql(stack, "SELECT location_id, sku, on_hand FROM positions")
    } == moved
    applied = sql(stack, "SELECT count(*) FROM processed_events WHERE event_id LIKE 'reconcile:%'")[0][0]
    assert applied == 30


@pytest.mark.parametrize(
    ("mangle", "line", "message"),
    [
        (
            lambda rows: (
                [{k: v for k, v in r.items() if k != "counted_at"} for r in rows],
                ("location_id", "sku", "counted"),
            ),
            1,
            "missing column counted_at",
        ),
        (lambda rows: (_at(rows, 7, counted=-3), None), 9, "counted must not be negative"),
        (
            lambda rows: (_at(rows, 3, location_id="store-nowhere"), None),
            5,
            "unknown location 'store-nowhere'",
        ),
        (
            lambda rows: (_at(rows, 0, counted_at="2026-11-31T10:00:00Z"), None),
            2,
            "counted_at is not an ISO 8601",
        ),
    ],
    ids=["missing-column", "negative-count", "unknown-location", "bad-date"],
)
async def test_a_malformed_counts_file_exits_2_naming_the_line_and_applies_nothing(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture, mangle, line: int, message: str
) -> None:
    loc = unique("store")
    await stocked(stack, {loc: {f"SKU-{n}": 5 for n in range(10)}})
    good = [
        {"location_id": loc, "sku": f"SKU-{n}", "counted": 1, "counted_at": COUNTED_AT.isoformat()}
        for n in range(10)
    ]
    rows, columns = mangle(good)
    counts = write_counts(
        tmp_path / "bad.csv", rows, columns or ("location_id", "sku", "counted", "counted_at")
    )
    before = movements(stack)

    run = await reconcile(stack, "--counts", str(counts), "--apply", capsys=capsys)

    assert run.code == 2 and run.report == {}
    assert f"{counts} line {line}: {message}" in run.output
    assert movements(stack) == before


def _at(rows: list[dict[str, Any]], index: int, **changes: Any) -> list[dict[str, Any]]:
    return [{**row, **changes} if i == index else row for i, row in enumerate(rows)]


# -- could not run -----------------------------------------------------------------------------------------------


async def test_unreachable_servers_exit_2_with_a_clear_message(
    stack: Stack, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare(stack.database_url, stack.nats_url, [])
    monkeypatch.setenv("STOCKSYNC_NATS_URL", "nats://127.0.0.1:9")
    no_nats = await reconcile(stack, capsys=capsys)
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/stocksync")
    no_database = await reconcile(stack, capsys=capsys)

    assert no_nats.code == 2 and "NATS is unreachable at nats://127.0.0.1:9" in no_nats.output
    assert no_database.code == 2 and "the database is unreachable" in no_database.output


async def test_a_jetstream_that_does_not_answer_is_tried_again_before_the_run_gives_up(
    stack: Stack, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream answers 503 while a cluster elects a leader (after a node restart, say): a passing fault, so
    the run is tried again. A nats-server without JetStream answers 503 for ever: after its tries (each a
    connection of its own, as the server counts them) the run gives up, exit 2."""
    await prepare(stack.database_url, stack.nats_url, [])
    port, monitor = free_port(), free_port()
    server = subprocess.Popen(
        [str(nats_server_binary()), "--addr", "127.0.0.1", "--port", str(port), "--http_port", str(monitor)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: _answers(port), what="nats-server without JetStream")
        monkeypatch.setenv("STOCKSYNC_NATS_URL", f"nats://127.0.0.1:{port}")
        monkeypatch.setattr(run_module, "RETRY_PAUSE_S", 0.1)
        run = await reconcile(stack, capsys=capsys)
        connz = f"http://127.0.0.1:{monitor}/connz?state=closed"
        closed = httpx.get(connz, timeout=5, trust_env=False).json()
    finally:
        terminate(server)
    assert run.code == 2 and "ServiceUnavailableError" in run.output
    tries = [c for c in closed["connections"] if c.get("name") == "stocksync-reconcile"]
    assert len(tries) == run_module.RUN_TRIES


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


# -- at scale ----------------------------------------------------------------------------------------------------


async def test_a_bulk_seeded_ledger_reconciles_clean_once_the_bucket_is_filled(stack: Stack) -> None:
    await prepare(stack.database_url, stack.nats_url, [])
    await seed_bulk(stack.database_url, positions=2_000, movements=20_000, locations=20)  # a URL does too

    fill = await reconcile(stack, "--repair")
    clean = await reconcile(stack)

    assert fill.kinds == {"kv_missing"} and fill.report["summary"]["repaired"] == {"kv_missing": 2_000}
    assert (clean.code, clean.report["summary"]["checked"]) == (
        0,
        {"positions": 2_000, "movements": 20_000, "bucket_entries": 2_000},
    )


# -- 4b. the channel bucket ---------------------------------------------------------------------------------------


async def test_channel_entries_are_checked_against_the_positions_they_sum_and_repaired(stack: Stack) -> None:
    wh, ams, a, b = unique("wh"), unique("ams"), unique("SKU"), unique("SKU")
    await prepare(stack.database_url, stack.nats_url, [wh, ams])
    engine = create_engine(stack.database_url, pool_size=1)
    try:
        await put_channel(engine, Channel(channel_id="web", name="Web", locations=(wh, ams), buffer=1))
    finally:
        await engine.dispose()
    await apply(stack, receipt(wh, {a: 4, b: 2}), receipt(ams, {a: 3}))
    await relay_all(stack)

    clean = await reconcile(stack)
    assert (clean.code, clean.report["findings"]) == (0, [])
    assert clean.report["summary"]["checked"]["channel_skus"] == 2
    nc = await nats.connect(stack.nats_url)
    try:
        kv = await nc.jetstream().key_value(CHANNEL_BUCKET)
        entry = msgspec.json.decode((await kv.get(f"web.{a}")).value)
        assert entry["available"] == 6
        await kv.put(f"web.{a}", msgspec.json.encode({**entry, "available": 9}))
        await kv.delete(f"web.{b}")
    finally:
        await nc.close()

    found = await reconcile(stack)
    repair = await reconcile(stack, "--repair")
    again = await reconcile(stack)

    assert found.code == 1
    assert [
        (f["channel_id"], f["sku"], f["expected"], f["actual"]) for f in found.findings("channel_kv_stale")
    ] == [("web", a, 6, 9)]
    assert [(f["channel_id"], f["sku"]) for f in found.findings("channel_kv_missing")] == [("web", b)]
    assert repair.report["summary"]["repaired"] == {"channel_kv_missing": 1, "channel_kv_stale": 1}
    assert (again.code, again.report["findings"]) == (0, [])


async def test_a_hundred_orders_racing_nats_sales_leave_a_ledger_that_reconciles_clean(stack: Stack) -> None:
    """Issue 11's race: the channel has 10 units over 4 stores, 100 orders are posted at once while the tills
    sell the same sku over NATS: the orders take every unit the channel has left, none is half allocated or
    oversold, the invariants hold, and reconcile exits 0. Each store keeps one unit back for walk-in customers
    (safety stock), so a till's sale never leaves a hold short. A sale applied before its store's units were
    allocated takes one of the channel's units (safety stock is a level, not a unit set aside), one applied
    after takes the unit kept back: the channel had 6 to 10 units, by the interleaving (CI saw 6)."""
    stores, sku = [unique("store") for _ in range(4)], unique("SKU")
    await prepare(stack.database_url, stack.nats_url, stores)
    engine = create_engine(stack.database_url, pool_size=10)
    try:
        await put_channel(engine, Channel(channel_id="web", name="Web", locations=tuple(stores)))
        await apply(
            stack, *(receipt(store, {sku: qty}) for store, qty in zip(stores, (2, 3, 4, 5), strict=True))
        )
        keep_one = [
            SetSafetyStock(event_id=unique("ss"), location_id=store, occurred_at=at(1), sku=sku, qty=1)
            for store in stores
        ]
        await apply(stack, *keep_one)
        key = await create_key(engine, "ecommerce")
        app = create_app(engine=engine, ledger=GroupCommitLedger(engine))
        async with (
            in_process(stack.database_url, stack.nats_url),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
        ):
            nc = await nats.connect(stack.nats_url)
            sales = [sale(store, {sku: 1}, at=5) for store in stores]
            orders = [
                {"order_id": f"o-{i}", "channel_id": "web", "lines": [{"sku": sku, "qty": 1}]}
                for i in range(100)
            ]
            answers, _ = await asyncio.gather(
                asyncio.gather(
                    *(
                        http.post("/v1/orders", json=o, headers={"Authorization": f"Bearer {key}"})
                        for o in orders
                    )
                ),
                publish_events(nc.jetstream(), sales),
            )
            await nc.close()
            sold = {event.event_id for event in sales}
            await wait_until(lambda: _all(outcomes(stack.database_url, stores), sold), what="sales applied")
            await wait_until(lambda: _none(unrelayed(stack.database_url)), what="all relayed")
    finally:
        await engine.dispose()

    assert {a.status_code for a in answers} <= {201, 409}
    placed = [a.json() for a in answers if a.status_code == 201]
    allocated = sum(line["qty"] for o in placed for x in o["allocations"] for line in x["lines"])
    assert allocated == sum(line["qty"] for o in placed for line in o["lines"])  # none half allocated
    assert allocated == len(placed) and 6 <= allocated <= 10
    assert await invariant_violations(stack.database_url, stores) == []
    at_store = {store: 0 for store in stores}
    for x in (x for o in placed for x in o["allocations"]):
        at_store[x["location_id"]] += sum(line["qty"] for line in x["lines"])
    positions = sql(
        stack, f"SELECT location_id, on_hand, reserved, safety_stock FROM positions WHERE sku = '{sku}'"
    )
    for location, on_hand, reserved, safety_stock in positions:
        assert reserved == at_store[location] <= on_hand, location  # the holds, and no unit held twice
        assert on_hand - reserved - safety_stock <= 0, location  # 100 orders for 10 units left none behind
    run = await reconcile(stack)
    assert (run.code, run.report["findings"]) == (0, [])
