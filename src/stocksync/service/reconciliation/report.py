"""The machine reports (JSON and CSV, one row per finding) and the small state file kept between runs.

Findings are written as they are found; only the tally stays in memory. Each report is written beside its
final name and renamed into place when the run completes, so a run that could not finish leaves no half
report for a machine to read.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

import msgspec

from stocksync.domain.reconciliation import REPORT_COLUMNS, Finding, Tally

_json = msgspec.json.Encoder(decimal_format="number")
STATE_FILE = "reconcile-state.json"
REPORT_SUFFIXES = (".json", ".csv")


class DeadLetterSummary(msgspec.Struct, kw_only=True):
    retained: int = 0
    codes: dict[str, int] = {}
    new_since_last_run: int = 0
    new_codes: dict[str, int] = {}


class CountsSummary(msgspec.Struct, kw_only=True):
    file: str
    sha256: str
    rows: int
    differences: int = 0
    applied: int = 0
    value_at_cost: Decimal | None = None


class Summary(msgspec.Struct, kw_only=True):
    """The report's head: what was checked, what was found and repaired, by kind."""

    started_at: datetime
    finished_at: datetime | None = None
    exit_code: int = 0
    grace_seconds: float = 0
    findings: dict[str, int] = {}
    repaired: dict[str, int] = {}
    by_store: dict[str, dict[str, int]] = {}
    checked: dict[str, int] = {}
    dead_letters: DeadLetterSummary | None = None
    counts: CountsSummary | None = None
    examples: dict[str, list[Finding]] = {}


class State(msgspec.Struct, kw_only=True):
    """Where the last completed run stopped reading the DLQ (the stream's creation time guards a re-creation)."""

    dlq_stream_created: str | None = None
    dlq_last_seq: int = 0
    finished_at: datetime | None = None


def read_state(directory: Path) -> State:
    try:
        return msgspec.json.decode((directory / STATE_FILE).read_bytes(), type=State)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return State()


def write_state(directory: Path, state: State) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _replace(directory / STATE_FILE, _json.encode(state))


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class _Report:
    """One open report, written to a hidden temporary beside its final path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO = self.temporary.open("w", newline="", encoding="utf-8")

    def finish(self) -> None:
        self.file.close()
        os.replace(self.temporary, self.path)

    def abandon(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)


class _JsonReport(_Report):
    """``{"findings": [...], "summary": {...}}``: the findings stream first, the summary comes when known."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.file.write('{"findings": [')
        self.first = True

    def write(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.file.write(("\n" if self.first else ",\n") + _json.encode(finding).decode())
            self.first = False

    def close(self, summary: Summary) -> None:
        self.file.write('\n], "summary": ' + _json.encode(summary).decode() + "}\n")
        self.finish()


class _CsvReport(_Report):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writer = csv.writer(self.file)
        self.writer.writerow(REPORT_COLUMNS)

    def write(self, findings: Iterable[Finding]) -> None:
        self.writer.writerows([_cell(getattr(f, column)) for column in REPORT_COLUMNS] for f in findings)

    def close(self, summary: Summary) -> None:
        self.finish()


def _cell(value: object) -> object:
    """Empty for none, and booleans as JSON spells them, so both reports read the same."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else value


class Reports:
    """Where findings go as they are found: the tally (counts and examples) and every report file."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.tally = Tally()
        self._files: list[_JsonReport | _CsvReport] = []
        try:
            for path in paths:
                self._files.append(_JsonReport(path) if path.suffix.lower() == ".json" else _CsvReport(path))
        except BaseException:
            self.abandon()
            raise

    def add(self, findings: Sequence[Finding]) -> None:
        self.tally.extend(findings)
        for report in self._files:
            report.write(findings)

    def close(self, summary: Summary) -> None:
        for report in self._files:
            report.close(summary)

    def abandon(self) -> None:
        for report in self._files:
            report.abandon()
