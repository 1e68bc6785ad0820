"""Check 3, no event lost: every message STOCKSYNC_IN keeps has an outcome or a dead letter; the DLQ since the
last run; the events of an uploaded POS journal.

Streams are read by an ephemeral pull consumer without acks, a thousand messages per fetch, so memory holds
one batch whatever the stream's size; outcomes are looked up a batch at a time.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from stocksync.adapters import reconciliation as sql
from stocksync.aio import quietly
from stocksync.domain.events import EventId, decode_inbound
from stocksync.domain.model import EventKey
from stocksync.domain.reconciliation import (
    BadInput,
    Finding,
    dead_letter_finding,
    journal_finding,
    lost_event_finding,
)
from stocksync.service.reconciliation.context import BATCH, Context, Findings, chunks, open_input
from stocksync.wire import (
    DLQ_ALL,
    DLQ_STREAM,
    IN_ALL,
    IN_STREAM,
    WORKER_CONSUMER,
    DeadLetter,
    header_event_id,
    inbound_parts,
    subject_location,
)


class _EventIdOnly(msgspec.Struct):
    event_id: str | None = None


class JournalEntry(msgspec.Struct, frozen=True):
    """What reconcile needs of one POS spool line: the rest of the envelope is the ledger's business."""

    event_id: EventId
    location_id: str | None = None


async def read_batches(
    js: JetStreamContext, stream: str, subject: str, *, last_per_subject: bool = False
) -> AsyncIterator[list[Msg]]:
    """Every message ``stream`` keeps on ``subject`` (the last per subject if asked), oldest first, in batches."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return
    name = f"stocksync-reconcile-{uuid.uuid4().hex[:12]}"
    deliver = DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
    await js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            deliver_policy=deliver,
            ack_policy=AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=60.0,
            mem_storage=True,
        ),
    )
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=5)
            except TimeoutError:
                return
            yield msgs
            last = msgs[-1].metadata
            if last.num_pending == 0 or last.sequence.stream >= info.state.last_seq:
                return
    finally:
        await quietly(sub.unsubscribe())
        await quietly(js.delete_consumer(stream, name))


def _body_id(body: bytes) -> str | None:
    try:
        return msgspec.json.decode(body, type=_EventIdOnly).event_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # RecursionError: nested too deep
        return None


def _event_id(headers: dict[str, str] | None, body: bytes) -> str | None:
    """``Nats-Msg-Id`` where sent is the event_id (the worker refuses a message where it is not); else the body."""
    return header_event_id(headers) or _body_id(body)


@dataclass
class DeadLetters:
    """What the DLQ holds, to account for inbound messages, and what came since the last run."""

    sequences: set[int] = field(default_factory=set)
    keys: set[tuple[str, str]] = field(default_factory=set)  # (original subject, event_id)
    event_ids: set[str] = field(default_factory=set)
    retained: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    new_codes: Counter[str] = field(default_factory=Counter)
    stream_created: str | None = None
    last_seq: int = 0

    def holds(self, sequence: int, subject: str, event_id: str | None) -> bool:
        return sequence in self.sequences or (event_id is not None and (subject, event_id) in self.keys)

    def add(self, letter: DeadLetter) -> None:
        """Remember the letter's inbound sequence and its event ids (header and body, where they differ)."""
        self.codes[letter.error] += 1
        if letter.stream_sequence is not None:
            self.sequences.add(letter.stream_sequence)
        body = base64.b64decode(letter.body) if letter.body_encoding == "base64" else letter.body.encode()
        for event_id in {header_event_id(letter.headers), _body_id(body)} - {None}:
            self.keys.add((letter.subject, event_id))  # type: ignore[arg-type]
            self.event_ids.add(event_id)  # type: ignore[arg-type]


_UNREADABLE = DeadLetter(
    subject="?",
    headers={},
    body="",
    body_encoding="utf-8",
    error="unreadable_dead_letter",
    detail="the DLQ message is not a dead letter stocksync wrote",
    stream_sequence=None,
    dead_lettered_at=datetime.min.replace(tzinfo=UTC),
)


def _letter(data: bytes) -> DeadLetter:
    try:
        return msgspec.json.decode(data, type=DeadLetter)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _UNREADABLE


async def scan_dead_letters(ctx: Context, dead: DeadLetters, since: tuple[str | None, int]) -> Findings:
    """Read the whole DLQ (to account for inbound messages); report what came after the last run's sequence."""
    info = await ctx.js.stream_info(DLQ_STREAM)
    dead.stream_created = info.created.isoformat() if info.created else None
    dead.last_seq = info.state.last_seq
    after = since[1] if since[0] == dead.stream_created else 0  # a re-created stream restarts its sequences
    ctx.progress.phase("dead-letter queue", info.state.messages)
    async for msgs in read_batches(ctx.js, DLQ_STREAM, DLQ_ALL):
        findings = []
        for msg in msgs:
            letter, sequence = _letter(msg.data), msg.metadata.sequence.stream
            dead.add(letter)
            dead.last_seq = max(dead.last_seq, sequence)
            if sequence > after:
                dead.new_codes[letter.error] += 1
                findings.append(
                    dead_letter_finding(
                        location_id=subject_location(msg.subject),
                        sequence=sequence,
                        original_subject=letter.subject,
                        error=letter.error,
                        detail=letter.detail,
                    )
                )
        dead.retained += len(msgs)
        ctx.advance("dead_letters", len(msgs))
        yield findings


async def check_inbound(ctx: Context, dead: DeadLetters) -> Findings:
    """Every retained inbound message older than the grace has an outcome, or a dead letter."""
    info = await ctx.js.stream_info(IN_STREAM)
    acked = await _ack_floor(ctx.js)
    ctx.progress.phase("inbound stream", info.state.messages)
    async for msgs in read_batches(ctx.js, IN_STREAM, IN_ALL):
        settled = [m for m in msgs if m.metadata.timestamp <= ctx.cutoff]
        ids = [_event_id(m.headers, m.data) for m in settled]
        recorded = await _recorded(ctx, {i for i in ids if i is not None})
        yield [
            _lost(msg, event_id, acked)
            for msg, event_id in zip(settled, ids, strict=True)
            if (_subject_location(msg.subject), event_id) not in recorded
            and not dead.holds(msg.metadata.sequence.stream, msg.subject, event_id)
        ]
        ctx.advance("inbound_messages", len(msgs))


async def _ack_floor(js: JetStreamContext) -> int:
    try:
        info = await js.consumer_info(IN_STREAM, WORKER_CONSUMER)
    except NotFoundError:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor else 0


def _lost(msg: Msg, event_id: str | None, ack_floor: int) -> Finding:
    try:
        lines = getattr(decode_inbound(msg.data), "lines", [])
    except (msgspec.DecodeError, msgspec.ValidationError):
        lines = []
    sequence = msg.metadata.sequence.stream
    return lost_event_finding(
        subject=msg.subject,
        location_id=subject_location(msg.subject),
        sequence=sequence,
        event_id=event_id,
        skus=[ln.sku for ln in lines],
        qtys=[_quantity(ln) for ln in lines],
        acknowledged=sequence <= ack_floor,
    )


def _quantity(line: msgspec.Struct) -> int:
    """The number a line carries, whatever its event type calls it."""
    for name in ("qty", "counted", "delta"):
        if hasattr(line, name):
            return getattr(line, name)
    return 0


def _subject_location(subject: str) -> str | None:
    """The worker applies a message only where body and subject agree: the subject's location is the event's."""
    parts = inbound_parts(subject)
    return parts[0] if parts else None


async def _recorded(ctx: Context, event_ids: set[str]) -> set[EventKey]:
    """Where each of these ids was recorded: an event is its location and its id together (rule 10)."""
    if not event_ids:
        return set()
    async with ctx.engine.connect() as conn:
        return await sql.recorded_keys(conn, event_ids)


# -- the POS journal ------------------------------------------------------------------------------------------


def journal_entries(path: Path) -> Iterator[list[tuple[int, JournalEntry]]]:
    """The spool's events, one JSON envelope per line, a batch at a time; a line without an event_id stops it."""
    decoder = msgspec.json.Decoder(JournalEntry)

    def entries() -> Iterator[tuple[int, JournalEntry]]:
        with open_input(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, decoder.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as error:
                    raise BadInput(f"not an event envelope: {error}", line=number, source=str(path)) from None

    return chunks(entries())


def validate_journal(path: Path) -> int:
    """Read the journal once before anything runs, so a bad line stops the run with its number."""
    return sum(len(batch) for batch in journal_entries(path))


async def check_journal(ctx: Context, path: Path, dead: DeadLetters, size: int) -> Findings:
    ctx.progress.phase("POS journal", size)
    for batch in journal_entries(path):
        recorded = await _recorded(ctx, {entry.event_id for _, entry in batch})
        anywhere = {event_id for _, event_id in recorded}
        yield [
            journal_finding(
                line=line,
                event_id=entry.event_id,
                location_id=entry.location_id,
                dead_lettered=entry.event_id in dead.event_ids,
            )
            for line, entry in batch
            if not _journaled(entry, recorded, anywhere)
        ]
        ctx.advance("journal_events", len(batch))


def _journaled(entry: JournalEntry, recorded: set[EventKey], anywhere: set[str]) -> bool:
    """Recorded at the line's location; at any location when the line names none."""
    if entry.location_id is None:
        return entry.event_id in anywhere
    return (entry.location_id, entry.event_id) in recorded
