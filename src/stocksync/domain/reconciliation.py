"""The nightly reconciliation's rules: what counts as a discrepancy, and how a store count is read.

The application layer aggregates in SQL and streams rows from PostgreSQL and JetStream; each row is judged
here, by plain functions, so every rule is unit-tested without a database. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from msgspec import Struct

from .channels import ChannelStock
from .errors import StocksyncError
from .events import ID_PATTERN, MAX_QUANTITY, Count, CountLine
from .ledger import count_is_stale, reservations_at_risk
from .model import available

_ID = re.compile(ID_PATTERN)

# -- kinds of finding ----------------------------------------------------------------------------------------

POSITION_MISSING: Final = "position_missing"
ON_HAND_MISMATCH: Final = "on_hand_mismatch"
DAMAGED_MISMATCH: Final = "damaged_mismatch"
RESERVED_MISMATCH: Final = "reserved_mismatch"
VERSION_MISMATCH: Final = "version_mismatch"
RESERVATION_OVERDUE: Final = "reservation_overdue"
RESERVATION_AT_RISK: Final = "reservation_at_risk"
EVENT_WITHOUT_OUTCOME: Final = "event_without_outcome"
DEAD_LETTER: Final = "dead_letter"
JOURNAL_EVENT_WITHOUT_OUTCOME: Final = "journal_event_without_outcome"
OUTBOX_STUCK: Final = "outbox_stuck"
KV_STALE: Final = "kv_stale"
KV_MISSING: Final = "kv_missing"
KV_UNKNOWN: Final = "kv_unknown"
COUNT_DIFFERENCE: Final = "count_difference"
CHANNEL_KV_STALE: Final = "channel_kv_stale"
CHANNEL_KV_MISSING: Final = "channel_kv_missing"

KINDS: Final = (
    POSITION_MISSING,
    ON_HAND_MISMATCH,
    DAMAGED_MISMATCH,
    RESERVED_MISMATCH,
    VERSION_MISMATCH,
    RESERVATION_OVERDUE,
    RESERVATION_AT_RISK,
    EVENT_WITHOUT_OUTCOME,
    DEAD_LETTER,
    JOURNAL_EVENT_WITHOUT_OUTCOME,
    OUTBOX_STUCK,
    KV_STALE,
    KV_MISSING,
    KV_UNKNOWN,
    COUNT_DIFFERENCE,
    CHANNEL_KV_STALE,
    CHANNEL_KV_MISSING,
)
# What --repair may fix: each goes through the path that normally does it, and none edits a movement.
REPAIRABLE: Final = frozenset(
    {RESERVATION_OVERDUE, OUTBOX_STUCK, KV_STALE, KV_MISSING, CHANNEL_KV_STALE, CHANNEL_KV_MISSING}
)
# Counted by store as distinct reservations ("their count by store").
BY_STORE: Final = (RESERVATION_OVERDUE, RESERVATION_AT_RISK)


class Finding(Struct, frozen=True, kw_only=True):
    """One discrepancy: a row of the machine report (JSON or CSV)."""

    kind: str
    location_id: str | None = None
    sku: str | None = None
    reservation_id: str | None = None
    expected: int | None = None
    actual: int | None = None
    detail: str = ""
    value_at_cost: Decimal | None = None
    repaired: bool = False
    channel_id: str | None = None


REPORT_COLUMNS: Final = Finding.__struct_fields__


class BadInput(StocksyncError):
    """A file given to reconcile that cannot be used: the run stops before checking anything (exit 2)."""

    code = "bad_input"

    def __init__(self, detail: str, *, line: int | None = None, source: str = "") -> None:
        super().__init__(detail, line=line)
        self.line = line
        self.source = source

    def __str__(self) -> str:
        where = f" line {self.line}" if self.line is not None else ""
        return f"{self.source or 'input'}{where}: {self.detail}"


# -- 1. ledger integrity ---------------------------------------------------------------------------------------


class PositionTotals(Struct, frozen=True, kw_only=True):
    """A position as stored (None when there is no row) beside what its movements and held lines add up to."""

    location_id: str
    sku: str
    on_hand: int | None
    reserved: int | None
    damaged: int | None
    version: int | None
    movement_on_hand: int
    movement_reserved: int
    movement_damaged: int
    movements: int
    held: int


def integrity_findings(t: PositionTotals) -> list[Finding]:
    """Rules 2 and 3: stored numbers are their movements' sums, reserved its held lines, version the count."""
    where = {"location_id": t.location_id, "sku": t.sku}
    if t.on_hand is None or t.reserved is None or t.damaged is None or t.version is None:
        return [
            Finding(
                kind=POSITION_MISSING,
                **where,
                expected=t.movements,
                actual=None,
                detail=f"{t.movements} movement(s) and {t.held} held unit(s) but no position row",
            )
        ]
    checks = (
        (ON_HAND_MISMATCH, t.movement_on_hand, t.on_hand, "on_hand differs from the sum of its movements"),
        (DAMAGED_MISMATCH, t.movement_damaged, t.damaged, "damaged differs from the sum of its movements"),
        (RESERVED_MISMATCH, t.held, t.reserved, "reserved differs from its held reservation lines"),
        (
            RESERVED_MISMATCH,
            t.movement_reserved,
            t.reserved,
            "reserved differs from the sum of its movements",
        ),
        (VERSION_MISMATCH, t.movements, t.version, "version differs from the number of its movements"),
    )
    return [
        Finding(kind=kind, **where, expected=expected, actual=actual, detail=detail)
        for kind, expected, actual, detail in checks
        if expected != actual
    ]


# -- 2. reservations ----------------------------------------------------------------------------------------------


def describe_lines(skus: Sequence[str], qtys: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(f"{sku}x{qty}" for sku, qty in zip(skus[:limit], qtys[:limit], strict=False))
    return shown + (f" and {len(skus) - limit} more" if len(skus) > limit else "")


def overdue_finding(
    reservation_id: str, location_id: str, expires_at: datetime, skus: Sequence[str], qtys: Sequence[int]
) -> Finding:
    """Rule 7: a held reservation past its expiry means the sweeper fell behind."""
    return Finding(
        kind=RESERVATION_OVERDUE,
        location_id=location_id,
        sku=skus[0] if len(skus) == 1 else None,
        reservation_id=reservation_id,
        expected=None,
        actual=sum(qtys),
        detail=f"held past its expiry {expires_at.isoformat()} ({describe_lines(skus, qtys)})",
    )


def at_risk_findings(
    location_id: str, sku: str, on_hand: int, held: Sequence[tuple[str, int]]
) -> list[Finding]:
    """Rule 4: the held reservations (oldest first) that on_hand no longer covers, as the alerts name them."""
    qty = dict(held)
    return [
        Finding(
            kind=RESERVATION_AT_RISK,
            location_id=location_id,
            sku=sku,
            reservation_id=rid,
            expected=qty[rid],
            actual=on_hand,
            detail=f"holds {qty[rid]} but on_hand {on_hand} covers only the older holds",
        )
        for rid in reservations_at_risk(on_hand, held)
    ]


# -- 3. no event lost ---------------------------------------------------------------------------------------------


def single_sku(skus: Sequence[str]) -> str | None:
    distinct = set(skus)
    return next(iter(distinct)) if len(distinct) == 1 else None


def lost_event_finding(
    *,
    subject: str,
    location_id: str | None,
    sequence: int,
    event_id: str | None,
    skus: Sequence[str],
    qtys: Sequence[int],
    acknowledged: bool,
) -> Finding:
    """A message kept in STOCKSYNC_IN with no recorded outcome and no dead letter."""
    state = (
        "the worker acknowledged it, yet no outcome is recorded: lost"
        if acknowledged
        else "the worker has not acknowledged it yet (is a worker running?)"
    )
    lines = f" ({describe_lines(skus, qtys)})" if skus else ""
    return Finding(
        kind=EVENT_WITHOUT_OUTCOME,
        location_id=location_id,
        sku=single_sku(skus),
        detail=f"stream sequence {sequence}, event {event_id or '(no event_id)'} on {subject}{lines}: {state}",
    )


def dead_letter_finding(
    *, location_id: str | None, sequence: int, original_subject: str, error: str, detail: str
) -> Finding:
    """A message dead-lettered since the last run: a producer sent something the ledger could not take."""
    return Finding(
        kind=DEAD_LETTER,
        location_id=location_id,
        detail=f"DLQ sequence {sequence}: {error} on {original_subject}: {detail}"[:500],
    )


def journal_finding(*, line: int, event_id: str, location_id: str | None, dead_lettered: bool) -> Finding:
    state = "dead-lettered, never applied" if dead_lettered else "no outcome recorded and not in the DLQ"
    return Finding(
        kind=JOURNAL_EVENT_WITHOUT_OUTCOME,
        location_id=location_id,
        detail=f"journal line {line}, event {event_id}: {state}",
    )


# -- 4. outbox and read models ---------------------------------------------------------------------------------


def outbox_finding(
    *,
    row_id: int,
    msg_id: str,
    created_at: datetime,
    target: tuple[str | None, str | None, str | None],
) -> Finding:
    """An outbox row unrelayed too long; ``target``: the (location_id, sku, reservation_id) its subject names."""
    location_id, sku, reservation_id = target
    return Finding(
        kind=OUTBOX_STUCK,
        location_id=location_id,
        sku=sku,
        reservation_id=reservation_id,
        detail=f"outbox row {row_id} ({msg_id}) unrelayed since {created_at.isoformat()}",
    )


class Numbers(Struct, frozen=True, kw_only=True):
    """A position's published numbers: as the ledger holds them, or as a KV entry claims them."""

    on_hand: int
    reserved: int
    damaged: int
    safety_stock: int
    available: int
    version: int

    def consistent(self) -> bool:
        """Rule 1 inside one body: its available follows from its own numbers."""
        return self.available == available(self.on_hand, self.reserved, self.safety_stock)

    def describe(self) -> str:
        return (
            f"on_hand {self.on_hand}, reserved {self.reserved}, damaged {self.damaged}, "
            f"safety_stock {self.safety_stock}, available {self.available}, version {self.version}"
        )


def ledger_numbers(on_hand: int, reserved: int, damaged: int, safety_stock: int, version: int) -> Numbers:
    return Numbers(
        on_hand=on_hand,
        reserved=reserved,
        damaged=damaged,
        safety_stock=safety_stock,
        available=available(on_hand, reserved, safety_stock),
        version=version,
    )


def entry_problem(entry: Numbers | None) -> str | None:
    """Why a decoded bucket value cannot be trusted on its own, if it cannot."""
    if entry is None:
        return "the entry is not a valid availability body"
    if not entry.consistent():
        return f"the entry's available {entry.available} does not follow from its own numbers (rule 1)"
    return None


def kv_finding(
    location_id: str,
    sku: str,
    ledger: Numbers | None,
    entry: Numbers | None,
    *,
    problem: str | None = None,
    in_flight: bool = False,
) -> Finding | None:
    """The bucket entry must say what the ledger says; one behind a change still being relayed is not stale.

    ``entry`` None means no entry; ``problem`` says why an entry that exists cannot be read or trusted;
    ``in_flight`` that an availability row of the position is not yet relayed (whatever its age: past the
    grace the outbox check names it, so the change is reported once).
    """
    where = {"location_id": location_id, "sku": sku}
    if ledger is None:
        return Finding(
            kind=KV_UNKNOWN,
            **where,
            actual=entry.version if entry else None,
            detail="the bucket has an entry for a position the ledger does not have",
        )
    if problem is not None:
        return Finding(kind=KV_STALE, **where, expected=ledger.version, detail=problem)
    if entry is None:
        return (
            None
            if in_flight
            else Finding(kind=KV_MISSING, **where, expected=ledger.version, detail="no entry in the bucket")
        )
    if entry == ledger or (in_flight and entry.version < ledger.version):
        return None
    return Finding(
        kind=KV_STALE,
        **where,
        expected=ledger.version,
        actual=entry.version,
        detail=f"bucket says {entry.describe()}; ledger says {ledger.describe()}",
    )


# -- 5. store counts ------------------------------------------------------------------------------------------------

COUNT_COLUMNS: Final = ("location_id", "sku", "counted", "counted_at")
COST_COLUMN: Final = "cost"


class CountRow(Struct, frozen=True, kw_only=True):
    line: int
    location_id: str
    sku: str
    counted: int
    counted_at: datetime
    cost: Decimal | None = None


def count_header(fields: Sequence[str] | None) -> bool:
    """Check the header row; whether it has the optional cost column."""
    if not fields:
        raise BadInput(
            "the file is empty; expected the header location_id,sku,counted,counted_at[,cost]", line=1
        )
    names = [name.strip() for name in fields]
    missing = [name for name in COUNT_COLUMNS if name not in names]
    if missing:
        raise BadInput(
            f"missing column {', '.join(missing)}: the header must name location_id,sku,counted,counted_at "
            "(cost is optional)",
            line=1,
        )
    return COST_COLUMN in names


def parse_count_row(
    line: int, row: Mapping[str, str | None], *, locations: Container[str], now: datetime, has_cost: bool
) -> CountRow:
    """One data row, checked as strictly as a count event, plus the file's own rules."""

    def value(name: str) -> str:
        raw = (row.get(name) or "").strip()
        if not raw:
            raise BadInput(f"{name} is empty", line=line)
        return raw

    location_id, sku = value("location_id"), value("sku")
    for name, ident in (("location_id", location_id), ("sku", sku)):
        if not _ID.match(ident):
            raise BadInput(f"{name} {ident!r} is not a valid id ({ID_PATTERN})", line=line)
    if location_id not in locations:
        raise BadInput(f"unknown location {location_id!r}", line=line)
    cost = (row.get(COST_COLUMN) or "").strip() if has_cost else ""
    return CountRow(
        line=line,
        location_id=location_id,
        sku=sku,
        counted=_counted(value("counted"), line),
        counted_at=_counted_at(value("counted_at"), line, now),
        cost=_cost(cost, line) if cost else None,
    )


def _counted(raw: str, line: int) -> int:
    try:
        counted = int(raw)
    except ValueError:
        raise BadInput(f"counted must be a whole number, got {raw!r}", line=line) from None
    if counted < 0:
        raise BadInput(f"counted must not be negative, got {counted}", line=line)
    if counted > MAX_QUANTITY:
        raise BadInput(f"counted {counted} is more than {MAX_QUANTITY}", line=line)
    return counted


def _counted_at(raw: str, line: int, now: datetime) -> datetime:
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(f"counted_at is not an ISO 8601 date and time: {raw!r}", line=line) from None
    if when.tzinfo is None:
        raise BadInput(
            f"counted_at {raw!r} has no time zone (write e.g. 2026-11-23T21:00:00+01:00)", line=line
        )
    if when > now:
        raise BadInput(f"counted_at {raw!r} is in the future", line=line)
    return when


def _cost(raw: str, line: int) -> Decimal:
    try:
        cost = Decimal(raw)
    except InvalidOperation:
        raise BadInput(f"cost must be a number, got {raw!r}", line=line) from None
    if not cost.is_finite() or cost < 0:
        raise BadInput(f"cost must be a non-negative number, got {raw!r}", line=line)
    return cost


def count_finding(row: CountRow, as_of: int, last_count_at: datetime | None) -> Finding | None:
    """A count that disagrees with the ledger as of its instant; valued at cost when the file gives one."""
    difference = row.counted - as_of
    if difference == 0:
        return None
    detail = f"line {row.line}: counted {row.counted} at {row.counted_at.isoformat()}, ledger had {as_of}"
    if last_count_at is not None and superseded_count(row, last_count_at):
        detail += f"; not applicable: a newer count at {last_count_at.isoformat()} stands"
    return Finding(
        kind=COUNT_DIFFERENCE,
        location_id=row.location_id,
        sku=row.sku,
        expected=as_of,
        actual=row.counted,
        detail=detail,
        value_at_cost=None if row.cost is None else row.cost * difference,
    )


def superseded_count(row: CountRow, last_count_at: datetime | None) -> bool:
    """Rule 9, as the ledger applies it: the file's count would move nothing."""
    return count_is_stale(row.counted_at, last_count_at)


def count_event_id(file_digest: str, line: int) -> str:
    """Derived from the file's content and the row, so applying the same file again is a duplicate."""
    return f"reconcile:{file_digest[:16]}:{line}"


def count_event(row: CountRow, file_digest: str, reference: str) -> Count:
    return Count(
        event_id=count_event_id(file_digest, row.line),
        location_id=row.location_id,
        occurred_at=row.counted_at,
        source="reconcile",
        reference=reference[:256],
        lines=[CountLine(sku=row.sku, counted=row.counted)],
    )


# -- the summary -------------------------------------------------------------------------------------------------


class Tally:
    """Counts findings by kind, keeps the first few of each as examples and counts reservations by store.

    Findings themselves stream to the report files; only this much stays in memory.
    """

    def __init__(self, examples: int = 3) -> None:
        self.examples = examples
        self.found: dict[str, int] = {}
        self.repaired: dict[str, int] = {}
        self.first: dict[str, list[Finding]] = {}
        self.value_at_cost: Decimal | None = None
        self._stores: dict[str, dict[str, set[str]]] = {}

    def add(self, finding: Finding) -> None:
        kind = finding.kind
        self.found[kind] = self.found.get(kind, 0) + 1
        if finding.repaired:
            self.repaired[kind] = self.repaired.get(kind, 0) + 1
        if len(examples := self.first.setdefault(kind, [])) < self.examples:
            examples.append(finding)
        if finding.value_at_cost is not None:
            self.value_at_cost = (self.value_at_cost or Decimal(0)) + finding.value_at_cost
        if kind in BY_STORE and finding.location_id and finding.reservation_id:
            self._stores.setdefault(kind, {}).setdefault(finding.location_id, set()).add(
                finding.reservation_id
            )

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    @property
    def total(self) -> int:
        return sum(self.found.values())

    def by_store(self) -> dict[str, dict[str, int]]:
        """Distinct reservations per store, for the reservation kinds."""
        return {
            kind: {loc: len(ids) for loc, ids in sorted(stores.items())}
            for kind, stores in self._stores.items()
        }


def exit_code(tally: Tally) -> int:
    """0 clean, 1 when anything was found (repaired or not: the night's report must say so)."""
    return 1 if tally.total else 0


# -- 4b. the channel bucket ---------------------------------------------------------------------------------


def channel_finding(stock: ChannelStock, entry: int | None) -> Finding | None:
    """A channel's entry (the ``available`` it says, None where the bucket has none) against what the
    ledger's positions say the channel may sell (spec section 7); a sku none of its locations holds needs none."""
    where = {"channel_id": stock.channel_id, "sku": stock.sku, "expected": stock.available}
    if entry is None:
        if all(line.available == 0 for line in stock.locations):
            return None
        return Finding(kind=CHANNEL_KV_MISSING, **where, detail="no entry in the channel bucket")
    if entry == stock.available:
        return None
    says = ", ".join(f"{x.location_id} {x.available}" for x in stock.locations)
    detail = f"bucket says {entry}; ledger says {stock.available} ({says}, buffer kept back)"
    return Finding(kind=CHANNEL_KV_STALE, **where, actual=entry, detail=detail)
