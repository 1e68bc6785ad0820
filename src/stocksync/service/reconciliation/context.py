"""What every reconciliation check shares: connections, the run's instant and grace, progress, repair logging."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

import msgspec
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.reconciliation import BATCH
from stocksync.domain.reconciliation import BadInput, Finding
from stocksync.service.ledger_service import LedgerService

log = structlog.get_logger("stocksync.reconcile")

Findings = AsyncIterator[list[Finding]]


class ReconcileOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What to check and fix, as `stocksync reconcile` was asked."""

    counts: Path | None = None
    apply: bool = False
    repair: bool = False
    pos_journal: Path | None = None
    reports: tuple[Path, ...] = ()
    grace_seconds: float = 300.0
    home: Path = Path(".stocksync")

    @property
    def state_dir(self) -> Path:
        """The reports' directory (so the nightly job's window is its own), else the stocksync home."""
        return self.reports[0].parent if self.reports else self.home


class Progress(Protocol):
    """How a run shows where it is; the command line draws it as a progress bar."""

    def phase(self, name: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class Quiet:
    """No progress shown: for callers without a terminal."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class Context:
    engine: AsyncEngine
    nc: Client
    ledger: LedgerService
    options: ReconcileOptions
    now: datetime
    progress: Progress
    relay_all: Callable[[], Awaitable[bool]] | None = None  # publish the outbox under the relay's lock
    seen: Counter[str] = field(default_factory=Counter)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def cutoff(self) -> datetime:
        """Anything newer than this may still be in flight (being applied, relayed or swept): not judged."""
        return self.now - timedelta(seconds=self.options.grace_seconds)

    def advance(self, what: str, n: int) -> None:
        """Count what was checked (for the report) and move the progress bar."""
        self.seen[what] += n
        self.progress.advance(n)


def repaired(finding: Finding, how: str) -> Finding:
    """Mark and log one repair: each is counted in the report and logged for the audit."""
    log.info(
        "reconcile_repaired",
        kind=finding.kind,
        location_id=finding.location_id,
        sku=finding.sku,
        reservation_id=finding.reservation_id,
        how=how,
    )
    return msgspec.structs.replace(finding, repaired=True, detail=f"{finding.detail}; repaired: {how}")


def not_repaired(finding: Finding, why: str) -> Finding:
    log.warning(
        "reconcile_not_repaired",
        kind=finding.kind,
        location_id=finding.location_id,
        sku=finding.sku,
        reservation_id=finding.reservation_id,
        why=why,
    )
    return msgspec.structs.replace(finding, detail=f"{finding.detail}; not repaired: {why}")


def chunks(items: Iterable, size: int = BATCH) -> Iterable[list]:
    """Lists of ``size`` items from any iterable, so files and streams are handled a batch at a time."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_input(path: Path, mode: str = "r", **options: Any) -> IO:
    """Open a file given on the command line; one that cannot be read is bad input (exit 2), not a crash."""
    try:
        return path.open(mode, **options)
    except OSError as error:
        raise BadInput(f"cannot read it: {error.strerror or error}", source=str(path)) from None
