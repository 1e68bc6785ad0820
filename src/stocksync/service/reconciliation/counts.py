"""Check 5: a store's count file against the ledger as of each count's instant; ``--apply`` posts the differences
as count events through `LedgerService.apply`, the path every event takes.

The ledger's on_hand as of ``counted_at`` is the sum of the on_hand deltas of the movements that *occurred*
before it (a till's sale that reached the ledger late still happened before the count), plus a count movement
at that very instant: that is exactly what the count rule (rule 9) measures against, so the difference
reported is the delta `--apply` will move. The file is read twice, streaming: once to check every line before
anything runs, once to compare in chunks.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import msgspec

from stocksync.adapters import reconciliation as sql
from stocksync.domain.reconciliation import (
    BadInput,
    CountRow,
    Finding,
    count_event,
    count_event_id,
    count_finding,
    count_header,
    parse_count_row,
    superseded_count,
)
from stocksync.service.reconciliation.context import (
    Context,
    Findings,
    chunks,
    not_repaired,
    open_input,
    repaired,
)


class CountsFile(msgspec.Struct, frozen=True, kw_only=True):
    """A checked count file: its digest names the events `--apply` posts."""

    path: Path
    digest: str
    rows: int
    locations: frozenset[str]


def file_digest(path: Path) -> str:
    with open_input(path, "rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def count_rows(path: Path, locations: frozenset[str], now: datetime) -> Iterator[CountRow]:
    """Each data row, parsed and checked; the first bad one raises BadInput naming its line."""
    with open_input(path, "r", newline="", encoding="utf-8-sig") as data:
        reader = csv.DictReader(data, skipinitialspace=True)
        try:
            has_cost = count_header(reader.fieldnames)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or ()]
            for row in reader:
                yield parse_count_row(reader.line_num, row, locations=locations, now=now, has_cost=has_cost)
        except BadInput as error:
            error.source = str(path)
            raise
        except (csv.Error, UnicodeDecodeError) as error:
            raise BadInput(
                f"not a readable CSV file: {error}", line=reader.line_num, source=str(path)
            ) from None


async def validate_counts(ctx: Context, path: Path) -> CountsFile:
    """Read the whole file once before anything runs: a bad line stops the run (exit 2) with its number."""
    async with ctx.engine.connect() as conn:
        locations = await sql.location_ids(conn)
    seen: dict[tuple[str, str, datetime], int] = {}
    rows = 0
    for row in count_rows(path, locations, ctx.now):
        first = seen.setdefault((row.location_id, row.sku, row.counted_at), row.line)
        if first != row.line:
            raise BadInput(
                f"{row.location_id} {row.sku} at {row.counted_at.isoformat()} is counted on line "
                f"{first} already",
                line=row.line,
                source=str(path),
            )
        rows += 1
    return CountsFile(path=path, digest=file_digest(path), rows=rows, locations=locations)


async def check_counts(ctx: Context, counts: CountsFile) -> Findings:
    ctx.progress.phase(f"store counts ({counts.path.name})", counts.rows)
    for chunk in chunks(count_rows(counts.path, counts.locations, ctx.now)):
        async with ctx.engine.connect() as conn:
            ledger = await sql.ledger_as_of(conn, [(r.location_id, r.sku, r.counted_at) for r in chunk])
        differences = [
            (row, finding, last_count_at)
            for row, (_, as_of, last_count_at) in zip(chunk, ledger, strict=True)
            if (finding := count_finding(row, as_of, last_count_at)) is not None
        ]
        yield await _apply(ctx, counts, differences) if ctx.options.apply else [f for _, f, _ in differences]
        ctx.advance("count_rows", len(chunk))


async def _apply(
    ctx: Context, counts: CountsFile, differences: list[tuple[CountRow, Finding, datetime | None]]
) -> list[Finding]:
    """Post the differences as count events; their ids make a second run of the same file a duplicate."""
    applicable = [row for row, _, last in differences if not superseded_count(row, last)]
    reference = f"reconcile {counts.path.name}"
    outcomes = {}
    for batch in chunks(applicable, 200):
        result = await ctx.ledger.apply([count_event(row, counts.digest, reference) for row in batch])
        outcomes.update({o.event_id: o for o in result.outcomes})
    findings = []
    for row, finding, _ in differences:
        outcome = outcomes.get(count_event_id(counts.digest, row.line))
        if outcome is None:
            findings.append(finding)
        elif outcome.outcome == "applied":
            findings.append(repaired(finding, f"applied as count event {outcome.event_id}"))
        else:
            findings.append(
                not_repaired(
                    finding,
                    f"count event {outcome.event_id} was {outcome.outcome}"
                    f"{' (' + outcome.error + ')' if outcome.error else ''}",
                )
            )
    return findings
