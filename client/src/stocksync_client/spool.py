"""The till's spool: a SQLite file holding every sale and return until the ledger's outcome for it arrives,
and a journal of every event for the nightly reconciliation (`stocksync reconcile --pos-journal`).

All calls are blocking (the client runs them on a thread of its own); the file is locked while a client holds
it, so two tills can never forward each other's events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, TextIO

from msgspec import Struct

from stocksync_contract.events import InboundEvent, decode_inbound
from stocksync_contract.messages import OutcomeMessage
from stocksync_contract.wire import event_body, event_subject

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,"
    " subject TEXT NOT NULL, body BLOB NOT NULL, spooled_at TEXT NOT NULL,"
    " published INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS rejected (event_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, error TEXT,"
    " body BLOB NOT NULL, spooled_at TEXT NOT NULL, recorded_at TEXT NOT NULL)",
    # Every event the till recorded, settled or not, for the nightly reconciliation (`--pos-journal`).
    "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, spooled_at TEXT NOT NULL)",
)
JOURNAL_DAYS = 30


def export_journal(spool_path: str | Path, out: TextIO) -> int:
    """Write the till's journal as JSON lines, one event envelope per line; returns how many.

    Reads the spool file directly, so run it while the till's client is closed (the spool is locked while open).
    """
    db = sqlite3.connect(f"{Path(spool_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT body FROM journal ORDER BY seq")
        written = 0
        for (body,) in rows:
            out.write(bytes(body).decode() + "\n")
            written += 1
        return written
    finally:
        db.close()


class SpoolInUse(RuntimeError):
    """Another client has this spool open (two tills on one spool would forward each other's events)."""


class RejectedEvent(Struct, frozen=True, kw_only=True):
    """An event of this till that the ledger refused (rule 11), kept for the store to look at."""

    event: InboundEvent
    error: str | None
    spooled_at: datetime
    recorded_at: datetime


class Cursor(NamedTuple):
    """A place in the outcome stream; its creation time tells a re-created stream from the old one."""

    stream: str
    seq: int


class SpooledEvent(NamedTuple):
    seq: int
    event_id: str
    subject: str
    body: bytes
    published: bool


class Spool:
    """The SQLite spool (WAL, fsync at every commit, locked to one client). Blocking: use from one thread."""

    def __init__(self, path: str | Path, location_id: str, till_id: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.location_id, self.till_id = location_id, till_id
        self._db = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            for pragma in ("locking_mode=EXCLUSIVE", "journal_mode=WAL", "synchronous=FULL"):
                self._db.execute(f"PRAGMA {pragma}")
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._claim(location_id, till_id)
                kept_from = (datetime.now(UTC) - timedelta(days=JOURNAL_DAYS)).isoformat()
                self._db.execute("DELETE FROM journal WHERE spooled_at < ?", (kept_from,))
        except sqlite3.OperationalError as error:
            self._db.close()
            if "locked" in str(error):
                raise SpoolInUse(f"the spool {path} is open in another client") from error
            raise
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _claim(self, location_id: str, till_id: str) -> None:
        """A spool belongs to one till for ever: its sequence numbers are that till's event ids."""
        owner = (self._meta("location_id"), self._meta("till_id"))
        if owner == (None, None):
            self._set_meta("location_id", location_id)
            self._set_meta("till_id", till_id)
            self._set_meta("last_seq", 0)
        elif owner != (location_id, till_id):
            raise ValueError(f"this spool belongs to till {owner[1]!r} at {owner[0]!r}")

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def append(self, build: Callable[[str], InboundEvent]) -> tuple[str, int]:
        """Take the next sequence number, build and validate the event, and store it; (event_id, pending)."""
        with self._transaction():
            seq = int(self._meta("last_seq") or 0) + 1
            event = build(f"{self.location_id}:{self.till_id}:{seq:06d}")
            body, spooled_at = event_body(event), datetime.now(UTC).isoformat()
            self._db.execute(
                "INSERT INTO spool (seq, event_id, subject, body, spooled_at) VALUES (?, ?, ?, ?, ?)",
                (seq, event.event_id, event_subject(event), body, spooled_at),
            )
            self._db.execute(
                "INSERT INTO journal (seq, body, spooled_at) VALUES (?, ?, ?)", (seq, body, spooled_at)
            )
            self._set_meta("last_seq", seq)
        return event.event_id, self.count()

    def unsettled(self, limit: int) -> list[SpooledEvent]:
        rows = self._db.execute(
            "SELECT seq, event_id, subject, body, published FROM spool ORDER BY seq LIMIT ?", (limit,)
        )
        return [SpooledEvent(*row[:4], bool(row[4])) for row in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        """So that a restarted till waits for the outcomes of these rather than sending them all again."""
        with self._transaction():
            self._db.executemany("UPDATE spool SET published = 1 WHERE seq = ?", [(seq,) for seq in seqs])

    def settle(self, outcomes: Sequence[OutcomeMessage], cursor: Cursor) -> tuple[list[OutcomeMessage], int]:
        """Drop the events these outcomes answer (rejected ones kept aside) and move the cursor with it."""
        settled = []
        with self._transaction():
            for outcome in outcomes:
                row = self._db.execute(
                    "DELETE FROM spool WHERE event_id = ? RETURNING seq, body, spooled_at",
                    (outcome.event_id,),
                ).fetchone()
                if row is None:  # a repeated outcome of an event already settled
                    continue
                settled.append(outcome)
                if outcome.outcome == "rejected":
                    recorded_at = outcome.recorded_at.isoformat()
                    self._db.execute(
                        "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?, ?)",
                        (outcome.event_id, row[0], outcome.error, row[1], row[2], recorded_at),
                    )
            self._set_cursor(cursor)
        return settled, self.count()

    def cursor(self) -> Cursor | None:
        """Where the last outcome message read was: a restarted till resumes after it."""
        stream, seq = self._meta("outcome_stream"), self._meta("outcome_cursor")
        return None if stream is None or seq is None else Cursor(stream, int(seq))

    def reset_cursor(self, cursor: Cursor) -> None:
        with self._transaction():
            self._set_cursor(cursor)

    def _set_cursor(self, cursor: Cursor) -> None:
        self._set_meta("outcome_stream", cursor.stream)
        self._set_meta("outcome_cursor", cursor.seq)

    def rejected(self) -> list[RejectedEvent]:
        rows = self._db.execute("SELECT body, error, spooled_at, recorded_at FROM rejected ORDER BY seq")
        return [
            RejectedEvent(
                event=decode_inbound(body),
                error=error,
                spooled_at=datetime.fromisoformat(spooled),
                recorded_at=datetime.fromisoformat(recorded),
            )
            for body, error, spooled, recorded in rows
        ]

    def close(self) -> None:
        self._db.close()
