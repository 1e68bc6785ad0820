"""The human side of a run, for the command line: a progress bar per check, then a table of findings."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from stocksync.domain.reconciliation import KINDS, REPAIRABLE, Finding
from stocksync.service.reconciliation.report import Summary


class RichProgress:
    """One bar per check: a count of messages or rows where the total is known, a spinner where it is not."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._progress.stop()

    def phase(self, name: str, total: int | None = None) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, total=task.completed or 1, completed=task.completed or 1)
        self._task = self._progress.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


def _where(finding: Finding) -> str:
    place = "/".join(part for part in (finding.location_id, finding.sku) if part)
    if finding.reservation_id:
        place = f"{place} {finding.reservation_id}".strip()
    numbers = (
        ""
        if finding.expected is None and finding.actual is None
        else (f" expected {_number(finding.expected)}, actual {_number(finding.actual)}")
    )
    return (place or finding.detail[:60]) + numbers


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(summary: Summary, console: Console) -> None:
    """Findings by kind with counts and the first few examples; then the DLQ and the counts file in a line each."""
    table = Table(title="stocksync reconcile", title_justify="left")
    for column, justify in (
        ("kind", "left"),
        ("found", "right"),
        ("repaired", "right"),
        ("examples", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for kind in (k for k in KINDS if k in summary.findings):
        repaired = (
            str(summary.repaired.get(kind, 0)) if kind in REPAIRABLE or kind in summary.repaired else "-"
        )
        examples = "\n".join(escape(_where(f)) for f in summary.examples.get(kind, []))
        table.add_row(kind, str(summary.findings[kind]), repaired, examples)
    if summary.findings:
        console.print(table)
    for kind, stores in summary.by_store.items():
        console.print(f"{kind} by store: " + ", ".join(f"{escape(loc)} {n}" for loc, n in stores.items()))
    if summary.dead_letters:
        dead = summary.dead_letters
        codes = ", ".join(f"{code} {n}" for code, n in sorted(dead.new_codes.items())) or "none"
        console.print(
            f"dead-letter queue: {dead.retained} kept, {dead.new_since_last_run} new since the last run "
            f"({codes})"
        )
    if summary.counts:
        counts = summary.counts
        value = f", value at cost {counts.value_at_cost}" if counts.value_at_cost is not None else ""
        console.print(
            f"counts {escape(counts.file)}: {counts.rows} rows, {counts.differences} differences, "
            f"{counts.applied} applied{value}"
        )
    checked = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in summary.checked.items())
    console.print(f"checked {checked}")
    total = sum(summary.findings.values())
    console.print(
        "[green]clean: no discrepancies[/green]"
        if not total
        else f"[yellow]{total} finding(s), {sum(summary.repaired.values())} repaired[/yellow]"
    )
