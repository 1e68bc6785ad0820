"""The ledger rules (spec section 2), applied in memory to the working set of one transaction.

The application layer loads and locks what a batch touches (`Loaded`), applies the events to a `Ledger` (the
working set), and writes once the frozen record of everything the batch changed (`Ledger.changes`). Nothing
here does I/O, so every rule can be tested as a plain function and the same rule serves HTTP, NATS and the
sweeper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from msgspec import Struct, field, structs

from .errors import (
    EventIdConflict,
    InsufficientStock,
    LedgerRefusal,
    ReservationExists,
    ReservationNotHeld,
    ReturnNotInOrder,
    UnknownLocation,
    UnknownOrder,
    UnknownReservation,
)
from .events import (
    Adjust,
    Cancel,
    Collect,
    Command,
    Count,
    Expire,
    Receipt,
    Reserve,
    Return,
    Sale,
    SetSafetyStock,
)
from .model import (
    Alert,
    EventKey,
    Location,
    Movement,
    OrderReturns,
    Outcome,
    OutcomeKind,
    Position,
    PositionKey,
    RecordedEvent,
    Reservation,
    ReservationKey,
    ReservationLine,
    Shortage,
)

INTERNAL = (Expire, SetSafetyStock)


def is_superseded(position: Position, occurred_at: datetime) -> bool:
    """Rule 9: a count already saw the effect of anything that happened before it."""
    return position.last_count_at is not None and occurred_at < position.last_count_at


def count_is_stale(counted_at: datetime, last_count_at: datetime | None) -> bool:
    """Rule 9: a count no newer than the position's latest applied count moves nothing (recorded superseded)."""
    return last_count_at is not None and counted_at <= last_count_at


def merge_lines(lines: Iterable[ReservationLine]) -> tuple[ReservationLine, ...]:
    """One line per sku, quantities summed, in first-seen order."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.qty
    return tuple(ReservationLine(sku=sku, qty=qty) for sku, qty in totals.items())


def shortages(lines: Sequence[ReservationLine], positions: Mapping[str, Position]) -> tuple[Shortage, ...]:
    """Rule 5: every line whose quantity exceeds what is available now."""
    return tuple(
        Shortage(sku=line.sku, requested=line.qty, available=positions[line.sku].available)
        for line in lines
        if line.qty > positions[line.sku].available
    )


def reservations_at_risk(on_hand: int, held: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """Rule 4: which held reservations (oldest first, as ``(reservation_id, qty)``) on_hand can no longer cover."""
    remaining = max(0, on_hand)
    at_risk = []
    for reservation_id, qty in held:
        if qty <= remaining:
            remaining -= qty
        else:
            at_risk.append(reservation_id)
    return tuple(at_risk)


class HeldLine(Struct, frozen=True, kw_only=True):
    """A held reservation's line at one position, as stored before the batch."""

    reservation_id: str
    qty: int
    created_at: datetime


def holds(reservations: Iterable[Reservation]) -> Iterator[tuple[PositionKey, HeldLine]]:
    """The line of every held reservation, with the position it claims."""
    for r in reservations:
        if r.status == "held":
            for line in r.lines:
                held = HeldLine(reservation_id=r.reservation_id, qty=line.qty, created_at=r.created_at)
                yield (r.location_id, line.sku), held


def oldest_first(lines: Iterable[HeldLine]) -> list[HeldLine]:
    """Rule 4's order of claim on a position's stock: the oldest hold first (ties by id, so it is total)."""
    return sorted(lines, key=lambda line: (line.created_at, line.reservation_id))


def on_hand_since(movements: Iterable[Movement], key: PositionKey, when: datetime) -> int:
    """On-hand deltas of a position's movements that occurred at or after ``when`` (what a count at ``when``
    did not see, rule 9). `ledger_store`'s SQL sums the stored movements the same way."""
    return sum(m.on_hand_delta for m in movements if (m.location_id, m.sku) == key and m.occurred_at >= when)


def reservation_keys(events: Iterable[Command]) -> set[ReservationKey]:
    """The reservations a batch names, each at its event's location (a reservation is both)."""
    return {(e.location_id, e.reservation_id) for e in events if hasattr(e, "reservation_id")}


def position_keys(
    events: Iterable[Command], reservations: Mapping[ReservationKey, Reservation]
) -> set[PositionKey]:
    """The positions a batch may move: its lines, and the lines of the reservations it names."""
    keys: set[PositionKey] = set()
    for event in events:
        if isinstance(event, SetSafetyStock):
            keys.add((event.location_id, event.sku))
        for line in getattr(event, "lines", ()):
            keys.add((event.location_id, line.sku))
        reservation = reservations.get((event.location_id, getattr(event, "reservation_id", "")))
        if reservation is not None:
            keys.update((reservation.location_id, line.sku) for line in reservation.lines)
    return keys


def returned_orders(events: Iterable[Command]) -> set[str]:
    """The online orders the batch's returns name (loaded, and locked, only for them)."""
    return {e.order_id for e in events if isinstance(e, Return) and e.order_id is not None}


def count_probes(events: Iterable[Command]) -> list[tuple[PositionKey, datetime]]:
    """The (position, instant) pairs whose stored on-hand-since the batch's counts need (rule 9)."""
    return [
        ((e.location_id, ln.sku), e.occurred_at) for e in events if isinstance(e, Count) for ln in e.lines
    ]


class Loaded(Struct, frozen=True, kw_only=True):
    """What a batch found, locked, before it applies: every position and reservation it may change."""

    now: datetime
    locations: Mapping[str, Location]
    positions: Mapping[PositionKey, Position]
    reservations: Mapping[ReservationKey, Reservation]
    recorded: Mapping[EventKey, RecordedEvent]
    on_hand_since: Mapping[tuple[PositionKey, datetime], int]  # stored, for each of `count_probes`
    orders: Mapping[str, OrderReturns] = field(default_factory=dict)  # those the batch's returns name


class Changes(Struct, frozen=True, kw_only=True):
    """Everything one batch changes, to be written once: positions (each in its final state, in the order it
    first changed), movements, the first records of events, reservations made and settled, the outcomes in
    event order, and the alerts, ``reservation_at_risk`` naming the holds as the batch leaves them."""

    now: datetime
    positions: tuple[Position, ...]
    new_positions: frozenset[PositionKey]  # of `positions`, those never stored before
    movements: tuple[Movement, ...]
    records: tuple[RecordedEvent, ...]
    new_reservations: tuple[Reservation, ...]
    settled_reservations: tuple[Reservation, ...]
    reservations: Mapping[ReservationKey, Reservation]  # every one the batch read or made, as it leaves them
    all_positions: Mapping[PositionKey, Position]  # every one the batch read or made, as it leaves them
    outcomes: tuple[Outcome, ...]
    alerts: tuple[Alert, ...]
    returned_orders: tuple[OrderReturns, ...] = ()  # online orders the batch's returns took back from


def stock_alerts(position: Position, event_id: str) -> list[Alert]:
    """Rule 4: a fact that leaves stock below zero or below what is promised raises alerts."""
    kinds = []
    if position.on_hand < 0:
        kinds.append("negative_stock")
    if position.reserved > 0 and position.on_hand < position.reserved:
        kinds.append("reservation_at_risk")
    return [
        Alert(
            kind=kind,  # type: ignore[arg-type]
            location_id=position.location_id,
            sku=position.sku,
            on_hand=position.on_hand,
            reserved=position.reserved,
            event_id=event_id,
        )
        for kind in kinds
    ]


class Ledger:
    """The positions and reservations one transaction holds locked, with a batch of events applied in order."""

    def __init__(
        self,
        *,
        now: datetime,
        locations: Mapping[str, Location],
        positions: Mapping[PositionKey, Position] = {},
        reservations: Mapping[ReservationKey, Reservation] = {},
        recorded: Mapping[EventKey, RecordedEvent] = {},
        stored_on_hand_after: Callable[[PositionKey, datetime], int] = lambda key, when: 0,
        orders: Mapping[str, OrderReturns] = {},
    ) -> None:
        self.now = now
        self.orders: dict[str, OrderReturns] = dict(orders)
        self._loaded_orders = orders
        self._locations = locations
        self._stored = frozenset(positions)
        self.positions: dict[PositionKey, Position] = dict(positions)
        self.reservations: dict[ReservationKey, Reservation] = dict(reservations)
        self._recorded: dict[EventKey, RecordedEvent] = dict(recorded)
        self._stored_on_hand_after = stored_on_hand_after
        self.movements: list[Movement] = []
        self.outcomes: list[Outcome] = []
        self.alerts: list[Alert] = []
        self.new_records: dict[EventKey, RecordedEvent] = {}
        self.changed_positions: dict[PositionKey, None] = {}
        self.changed_reservations: dict[ReservationKey, None] = {}

    @classmethod
    def of(cls, loaded: Loaded) -> Ledger:
        return cls(
            now=loaded.now,
            locations=loaded.locations,
            positions=loaded.positions,
            reservations=loaded.reservations,
            recorded=loaded.recorded,
            stored_on_hand_after=lambda key, when: loaded.on_hand_since.get((key, when), 0),
            orders=loaded.orders,
        )

    # -- the batch ---------------------------------------------------------------------------------------

    def positions_at_risk(self) -> set[PositionKey]:
        """Positions where a fact left held reservations short (rule 4): naming them needs their holds."""
        return {(a.location_id, a.sku) for a in self.alerts if a.kind == "reservation_at_risk"}

    def changes(self, held: Mapping[PositionKey, Sequence[HeldLine]]) -> Changes:
        """The frozen record of the batch; ``held``: the stored holds of `positions_at_risk`."""
        reservations = [self.reservations[key] for key in self.changed_reservations]
        # New when the reserve that made it was first applied in this batch, even if the batch settled it.
        made = [r for r in reservations if (r.location_id, r.event_id) in self.new_records]
        return Changes(
            now=self.now,
            positions=tuple(self.positions[key] for key in self.changed_positions),
            new_positions=frozenset(self.changed_positions) - self._stored,
            movements=tuple(self.movements),
            records=tuple(self.new_records.values()),
            new_reservations=tuple(made),
            settled_reservations=tuple(r for r in reservations if r not in made),
            reservations=dict(self.reservations),
            all_positions=dict(self.positions),
            outcomes=tuple(self.outcomes),
            alerts=tuple(self._named(alert, held) for alert in self.alerts),
            returned_orders=tuple(o for k, o in self.orders.items() if o is not self._loaded_orders.get(k)),
        )

    def _named(self, alert: Alert, held: Mapping[PositionKey, Sequence[HeldLine]]) -> Alert:
        if alert.kind != "reservation_at_risk":
            return alert
        key = (alert.location_id, alert.sku)
        lines = oldest_first(self._held_after(key, held.get(key, ())))
        at_risk = reservations_at_risk(alert.on_hand, [(line.reservation_id, line.qty) for line in lines])
        return structs.replace(alert, reservation_ids=at_risk)

    def _held_after(self, key: PositionKey, stored: Sequence[HeldLine]) -> Iterable[HeldLine]:
        """The position's holds as the batch leaves them: stored ones it did not touch, and its own held."""
        for line in stored:
            if (key[0], line.reservation_id) not in self.reservations:
                yield line
        yield from (line for at, line in holds(self.reservations.values()) if at == key)

    def apply(self, event: Command, body_hash: bytes) -> Outcome:
        """Apply one event exactly once (rule 10); a refusal moves nothing and is recorded (rule 11).

        An event is its location and id together: the same id at another location is another event.
        """
        key = (event.location_id, event.event_id)
        recorded = self._recorded.get(key)
        if recorded is not None:
            outcome = self._repeat(event, body_hash, recorded)
        else:
            outcome = self._first(event)
            if not isinstance(event, INTERNAL):
                record = RecordedEvent(body_hash=body_hash, outcome=outcome)
                self._recorded[key] = self.new_records[key] = record
        self.outcomes.append(outcome)
        return outcome

    def _first(self, event: Command) -> Outcome:
        try:
            kind = _HANDLERS[type(event)](self, event)
        except LedgerRefusal as refusal:
            return self._outcome(event, "rejected", refusal)
        return self._outcome(event, kind)

    def _repeat(self, event: Command, body_hash: bytes, recorded: RecordedEvent) -> Outcome:
        if recorded.body_hash != body_hash:
            conflict = EventIdConflict(f"event {event.event_id!r} was already recorded with another body")
            return self._outcome(event, "rejected", conflict)
        first = recorded.outcome
        kind: OutcomeKind = "rejected" if first.outcome == "rejected" else "duplicate"
        return structs.replace(first, outcome=kind, recorded_at=self.now)

    def _outcome(self, event: Command, kind: OutcomeKind, refusal: LedgerRefusal | None = None) -> Outcome:
        return Outcome(
            event_id=event.event_id,
            type=event.type,
            location_id=event.location_id,
            outcome=kind,
            recorded_at=self.now,
            error=refusal.code if refusal else None,
            detail=refusal.detail if refusal else None,
            reservation_id=getattr(event, "reservation_id", None),
            shortages=tuple(refusal.extra.get("shortages", ())) if refusal else (),
        )

    # -- reading and moving ------------------------------------------------------------------------------

    def location(self, location_id: str) -> Location:
        location = self._locations.get(location_id)
        if location is None:
            raise UnknownLocation(f"location {location_id!r} is not known")
        return location

    def position(self, location_id: str, sku: str) -> Position:
        """A position never seen reads as all zeros with version 0."""
        key = (location_id, sku)
        position = self.positions.get(key)
        if position is None:
            position = self.positions[key] = Position(location_id=location_id, sku=sku)
        return position

    def reservation(self, event: Collect | Cancel | Expire) -> Reservation:
        """The reservation the event names at its own location: the same id elsewhere is another one."""
        reservation = self.reservations.get((event.location_id, event.reservation_id))
        if reservation is None:
            raise UnknownReservation(
                f"reservation {event.reservation_id!r} is not known at {event.location_id!r}"
            )
        return reservation

    def move(
        self,
        event: Command,
        location_id: str,
        sku: str,
        *,
        on_hand: int = 0,
        reserved: int = 0,
        damaged: int = 0,
        reason: str | None = None,
        reservation_id: str | None = None,
        count_at: datetime | None = None,
        superseded: bool | None = None,
    ) -> Position:
        """Rules 2, 3 and 9: one movement, its deltas on the position, version + 1.

        ``count_at`` marks a count (it sets on_hand and is never itself superseded); ``superseded`` forces the
        flag, otherwise an on_hand change older than the latest count is superseded.
        """
        position = self.position(location_id, sku)
        if superseded is None:
            superseded = on_hand != 0 and count_at is None and is_superseded(position, event.occurred_at)
        if superseded:
            on_hand = 0
        position = structs.replace(
            position,
            on_hand=position.on_hand + on_hand,
            reserved=position.reserved + reserved,
            damaged=position.damaged + damaged,
            version=position.version + 1,
            last_count_at=count_at or position.last_count_at,
        )
        self.positions[position.key] = position
        self.changed_positions[position.key] = None
        self.movements.append(
            Movement(
                event_id=event.event_id,
                type=event.type,
                location_id=location_id,
                sku=sku,
                occurred_at=event.occurred_at,
                on_hand_delta=on_hand,
                reserved_delta=reserved,
                damaged_delta=damaged,
                reason=reason,
                superseded_by_count=superseded,
                reservation_id=reservation_id,
            )
        )
        if on_hand < 0:
            self.alerts.extend(stock_alerts(position, event.event_id))
        return position

    def on_hand_after(self, key: PositionKey, when: datetime) -> int:
        """On-hand deltas recorded for a position from ``when`` on: stored ones plus this batch's own.

        A change at the count's very instant is not earlier than it, so it is not superseded when it arrives
        later (rule 9); it is kept here too, so the result does not depend on which arrived first.
        """
        return self._stored_on_hand_after(key, when) + on_hand_since(self.movements, key, when)

    def take_back(self, event: Return) -> None:
        """Count a return's lines against its order (`ReturnNotInOrder` when they exceed what it shipped)."""
        order = self.orders.get(event.order_id or "")
        if order is None:
            raise UnknownOrder(f"order {event.order_id!r} is not known")
        wanted = merge_lines(ReservationLine(sku=line.sku, qty=line.qty) for line in event.lines)
        if order.status != "shipped":
            raise ReturnNotInOrder(f"order {order.order_id!r} is {order.status}: nothing shipped to return")
        for line in wanted:
            left = order.shipped.get(line.sku, 0) - order.returned.get(line.sku, 0)
            if line.qty > left:
                raise ReturnNotInOrder(f"order {order.order_id!r} has {left} of {line.sku!r} left to return")
        returned = dict(order.returned)
        for line in wanted:
            returned[line.sku] = returned.get(line.sku, 0) + line.qty
        self.orders[order.order_id] = structs.replace(order, returned=returned)

    def set_reservation(self, reservation: Reservation) -> None:
        self.reservations[reservation.key] = reservation
        self.changed_reservations[reservation.key] = None


# -- the rules, one function per event type --------------------------------------------------------------


def sell(ledger: Ledger, event: Sale) -> OutcomeKind:
    """Rule 4: a sale is a fact, always applied."""
    ledger.location(event.location_id)
    for line in event.lines:
        ledger.move(event, event.location_id, line.sku, on_hand=-line.qty)
    return "applied"


def take_return(ledger: Ledger, event: Return) -> OutcomeKind:
    """Rule 8: restock adds to on_hand, damaged to damaged (a count never saw damaged units).

    A return naming an online order (at any store: the customer brings it to the nearest) takes back at
    most what the order shipped of each sku, less what came back before; else it is refused whole.
    """
    ledger.location(event.location_id)
    if event.order_id is not None:
        ledger.take_back(event)
    for line in event.lines:
        if line.disposition == "damaged":
            ledger.move(event, event.location_id, line.sku, damaged=line.qty, reason="damaged")
        else:
            ledger.move(event, event.location_id, line.sku, on_hand=line.qty, reason="restock")
    return "applied"


def receive(ledger: Ledger, event: Receipt) -> OutcomeKind:
    ledger.location(event.location_id)
    for line in event.lines:
        ledger.move(event, event.location_id, line.sku, on_hand=line.qty)
    return "applied"


def adjust(ledger: Ledger, event: Adjust) -> OutcomeKind:
    ledger.location(event.location_id)
    for line in event.lines:
        ledger.move(event, event.location_id, line.sku, on_hand=line.delta, reason=line.reason)
    return "applied"


def count(ledger: Ledger, event: Count) -> OutcomeKind:
    """Rule 9: on_hand becomes the counted quantity as of occurred_at, plus what moved after it.

    A count no newer than the latest applied count of its position is recorded with delta 0, superseded.
    """
    ledger.location(event.location_id)
    for line in event.lines:
        position = ledger.position(event.location_id, line.sku)
        if count_is_stale(event.occurred_at, position.last_count_at):
            ledger.move(event, event.location_id, line.sku, reason="count", superseded=True)
            continue
        as_of = position.on_hand - ledger.on_hand_after(position.key, event.occurred_at)
        ledger.move(
            event,
            event.location_id,
            line.sku,
            on_hand=line.counted - as_of,
            reason="count",
            count_at=event.occurred_at,
        )
    return "applied"


def reserve(ledger: Ledger, event: Reserve) -> OutcomeKind:
    """Rule 5: held only if every line fits what is available now; otherwise rejected whole."""
    location = ledger.location(event.location_id)
    if (location.location_id, event.reservation_id) in ledger.reservations:
        raise ReservationExists(
            f"reservation {event.reservation_id!r} already exists at {location.location_id!r}"
        )
    lines = merge_lines(ReservationLine(sku=line.sku, qty=line.qty) for line in event.lines)
    positions = {line.sku: ledger.position(location.location_id, line.sku) for line in lines}
    missing = shortages(lines, positions)
    if missing:
        raise InsufficientStock(
            f"not enough available at {location.location_id!r} for {len(missing)} line(s)", shortages=missing
        )
    for line in lines:
        ledger.move(
            event, location.location_id, line.sku, reserved=line.qty, reservation_id=event.reservation_id
        )
    ledger.set_reservation(
        Reservation(
            reservation_id=event.reservation_id,
            location_id=location.location_id,
            channel=event.channel,
            status="held",
            lines=lines,
            created_at=ledger.now,
            expires_at=ledger.now + timedelta(seconds=event.ttl_seconds),
            event_id=event.event_id,
            reference=event.reference,
        )
    )
    return "applied"


def is_due(reservation: Reservation, now: datetime) -> bool:
    """Rule 7: a held reservation is expired from its ``expires_at`` on, whoever asks first (the sweeper, a
    collect or a cancel). The one definition of "due"; the sweeper's and reconciliation's SQL say the same."""
    return reservation.status == "held" and reservation.expires_at <= now


def expiry(reservation_id: str, location_id: str, now: datetime) -> Expire:
    """The expiry of one reservation, as the sweeper applies it: one event id per reservation."""
    return Expire(
        event_id=f"expire:{reservation_id}",
        location_id=location_id,
        occurred_at=now,
        reservation_id=reservation_id,
    )


def _leave_held(ledger: Ledger, event: Collect | Cancel | Expire, status: str, *, sold: bool) -> OutcomeKind:
    """Rule 6: a reservation leaves ``held`` once; repeating the same transition moves nothing.

    A collect or cancel that finds the hold due expires it first, with the sweeper's own movement, and is
    then refused: the event itself moves nothing (rule 11), the expiry does.
    """
    reservation = ledger.reservation(event)
    if reservation.status == status:
        return "duplicate"
    if status != "expired" and is_due(reservation, ledger.now):
        due = expiry(reservation.reservation_id, reservation.location_id, ledger.now)
        reservation = _settle(ledger, due, reservation, "expired", sold=False)
    if reservation.status != "held":
        raise ReservationNotHeld(
            f"reservation {reservation.reservation_id!r} is {reservation.status}", status=reservation.status
        )
    _settle(ledger, event, reservation, status, sold=sold)
    return "applied"


def _settle(
    ledger: Ledger, event: Collect | Cancel | Expire, reservation: Reservation, status: str, *, sold: bool
) -> Reservation:
    """Release every held line (sold: out of on_hand too) and give the reservation its new status."""
    for line in reservation.lines:
        ledger.move(
            event,
            reservation.location_id,
            line.sku,
            on_hand=-line.qty if sold else 0,
            reserved=-line.qty,
            reservation_id=reservation.reservation_id,
        )
    settled = structs.replace(reservation, status=status)  # type: ignore[arg-type]
    ledger.set_reservation(settled)
    return settled


def collect(ledger: Ledger, event: Collect) -> OutcomeKind:
    """Rule 6: collecting turns the hold into a sale."""
    return _leave_held(ledger, event, "collected", sold=True)


def cancel(ledger: Ledger, event: Cancel) -> OutcomeKind:
    return _leave_held(ledger, event, "cancelled", sold=False)


def expire(ledger: Ledger, event: Expire) -> OutcomeKind:
    """Rule 7: only a held reservation past its expiry expires; anything else is left alone."""
    reservation = ledger.reservation(event)
    if reservation.status == "held" and not is_due(reservation, ledger.now):
        raise ReservationNotHeld(f"reservation {reservation.reservation_id!r} is not due", status="held")
    return _leave_held(ledger, event, "expired", sold=False)


def set_safety_stock(ledger: Ledger, event: SetSafetyStock) -> OutcomeKind:
    """Setting the buffer is a change: version + 1 and a movement with zero deltas."""
    ledger.location(event.location_id)
    position = ledger.move(event, event.location_id, event.sku, reason="safety_stock")
    ledger.positions[position.key] = structs.replace(position, safety_stock=event.qty)
    return "applied"


_HANDLERS: dict[type, Callable[[Ledger, Command], OutcomeKind]] = {
    Sale: sell,
    Return: take_return,
    Receipt: receive,
    Adjust: adjust,
    Count: count,
    Reserve: reserve,
    Collect: collect,
    Cancel: cancel,
    Expire: expire,
    SetSafetyStock: set_safety_stock,
}  # type: ignore[dict-item]
