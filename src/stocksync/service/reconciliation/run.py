"""One reconciliation run: check the inputs, connect, run every check in order, write the reports.

The checks run read-only first (integrity before anything could change a position); each repair follows the
check that found its kind, and the count file comes last so its events do not disturb the other checks.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError, ServiceUnavailableError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import reconciliation as sql
from stocksync.adapters.database import create_engine
from stocksync.clock import Clock, utc_now
from stocksync.domain.errors import StocksyncError
from stocksync.domain.reconciliation import COUNT_DIFFERENCE, exit_code
from stocksync.service.ledger_service import LedgerService
from stocksync.service.reconciliation import counts as count_file
from stocksync.service.reconciliation import inbound, integrity, read_models
from stocksync.service.reconciliation.context import Context, Findings, Progress, Quiet, ReconcileOptions
from stocksync.service.reconciliation.report import (
    CountsSummary,
    DeadLetterSummary,
    Reports,
    State,
    Summary,
    read_state,
    write_state,
)
from stocksync.wire import AVAILABILITY_KV_STREAM, DLQ_STREAM, IN_STREAM

log = structlog.get_logger("stocksync.reconcile")

# JetStream answers 503 while a cluster elects a stream's leader (after a node restart, say): a passing fault,
# so the whole run is tried again (its repairs are idempotent, its reports written only at the end).
RUN_TRIES = 3
RETRY_PAUSE_S = 2.0


class CouldNotRun(StocksyncError):
    """The run could not be made (database or NATS unreachable, not migrated): exit 2."""

    code = "could_not_run"


async def reconcile(
    database_url: str,
    nats_url: str,
    options: ReconcileOptions,
    *,
    progress: Progress | None = None,
    clock: Clock = utc_now,
    nats_options: dict[str, Any] | None = None,
    relay_all: Callable[[AsyncEngine, Client], Awaitable[bool]] | None = None,
) -> Summary:
    """Run every check; raises BadInput for a bad file and CouldNotRun when a server cannot be used.
    ``nats_options``: the service's NATS credentials and TLS (`nats_auth.service_options`); ``relay_all``:
    how ``--repair`` publishes stuck outbox rows (`messaging.relay.relay_all`, given by the CLI)."""
    engine = create_engine(database_url, pool_size=4)
    try:
        await _ping(engine)
        attempt = 1
        while True:
            nc = await _connect(nats_url, nats_options or {})
            try:
                await _require_streams(nc)
                ctx = Context(
                    engine=engine,
                    nc=nc,
                    ledger=LedgerService(engine, clock=clock),
                    options=options,
                    now=clock(),
                    progress=progress or Quiet(),
                    relay_all=functools.partial(relay_all, engine, nc) if relay_all else None,
                )
                return await _run(ctx)
            except ServiceUnavailableError as error:
                if attempt == RUN_TRIES:
                    raise
                log.warning("reconcile_retried", attempt=attempt, error=type(error).__name__)
            finally:
                await nc.close()
            attempt += 1
            await asyncio.sleep(RETRY_PAUSE_S)
    except (TimeoutError, OSError, NatsError) as error:
        raise CouldNotRun(f"could not finish: {type(error).__name__}: {error}") from error
    except DBAPIError as error:
        raise CouldNotRun(_database_error(error)) from error
    finally:
        await engine.dispose()


async def _ping(engine: AsyncEngine) -> None:
    try:
        async with engine.connect() as conn:
            await sql.schema_ready(conn)
    except (TimeoutError, OSError, SQLAlchemyError) as error:
        raise CouldNotRun(_database_error(error)) from error


def _database_error(error: BaseException) -> str:
    cause = f"{type(getattr(error, 'orig', None) or error).__name__}: {error}"[:500]
    if "does not exist" in str(error) and "relation" in str(error):
        return "the database has no stocksync schema: run `stocksync migrate` first"
    if isinstance(error, (OperationalError, InterfaceError, OSError, asyncio.TimeoutError)):
        return f"the database is unreachable: {cause}"
    return f"the database refused a query: {cause}"


async def _connect(nats_url: str, options: dict[str, Any]) -> Client:
    try:
        nc = await nats.connect(
            servers=nats_url.split(","),
            connect_timeout=3,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.5,
            name="stocksync-reconcile",
            **options,
        )
    except (TimeoutError, OSError, NatsError) as error:
        raise CouldNotRun(f"NATS is unreachable at {nats_url}: {type(error).__name__}: {error}") from error
    return nc


async def _require_streams(nc: Client) -> None:
    for stream in (IN_STREAM, DLQ_STREAM, AVAILABILITY_KV_STREAM):
        try:
            await nc.jetstream().stream_info(stream)
        except NotFoundError:
            raise CouldNotRun(f"NATS has no stream {stream}: run `stocksync migrate` first") from None


async def _run(ctx: Context) -> Summary:
    options = ctx.options
    counts = await count_file.validate_counts(ctx, options.counts) if options.counts else None
    journal_size = inbound.validate_journal(options.pos_journal) if options.pos_journal else 0
    state = read_state(options.state_dir)
    dead = inbound.DeadLetters()
    reports = Reports(options.reports)
    try:
        ctx.seen.update(await integrity.ledger_sizes(ctx))
        for section in _sections(ctx, state, dead, counts, journal_size):
            async for findings in section:
                reports.add(findings)
        summary = _summary(ctx, reports, dead, counts)
        reports.close(summary)
    except BaseException:
        reports.abandon()
        raise
    write_state(
        options.state_dir,
        State(
            dlq_stream_created=dead.stream_created,
            dlq_last_seq=dead.last_seq,
            finished_at=summary.finished_at,
        ),
    )
    log.info("reconciled", exit_code=summary.exit_code, findings=summary.findings, repaired=summary.repaired)
    return summary


def _sections(
    ctx: Context,
    state: State,
    dead: inbound.DeadLetters,
    counts: count_file.CountsFile | None,
    journal_size: int,
) -> list[Findings]:
    """The checks in the order they must run: nothing changes a position before integrity has been read."""
    journal = ctx.options.pos_journal
    return [
        integrity.check_integrity(ctx),
        integrity.check_overdue(ctx),
        integrity.check_at_risk(ctx),
        read_models.check_outbox(ctx),
        inbound.scan_dead_letters(ctx, dead, (state.dlq_stream_created, state.dlq_last_seq)),
        inbound.check_inbound(ctx, dead),
        *([inbound.check_journal(ctx, journal, dead, journal_size)] if journal else []),
        read_models.check_bucket(ctx),
        read_models.check_channel_bucket(ctx),
        *([count_file.check_counts(ctx, counts)] if counts else []),
    ]


def _summary(
    ctx: Context, reports: Reports, dead: inbound.DeadLetters, counts: count_file.CountsFile | None
) -> Summary:
    tally = reports.tally
    return Summary(
        started_at=ctx.now,
        finished_at=ctx.ledger.clock(),
        exit_code=exit_code(tally),
        grace_seconds=ctx.options.grace_seconds,
        findings=dict(sorted(tally.found.items())),
        repaired=dict(sorted(tally.repaired.items())),
        by_store=tally.by_store(),
        checked=dict(ctx.seen),
        dead_letters=DeadLetterSummary(
            retained=dead.retained,
            codes=dict(dead.codes),
            new_since_last_run=sum(dead.new_codes.values()),
            new_codes=dict(dead.new_codes),
        ),
        counts=None
        if counts is None
        else CountsSummary(
            file=str(counts.path),
            sha256=counts.digest,
            rows=counts.rows,
            differences=tally.found.get(COUNT_DIFFERENCE, 0),
            applied=tally.repaired.get(COUNT_DIFFERENCE, 0),
            value_at_cost=tally.value_at_cost,
        ),
        examples=tally.first,
    )
