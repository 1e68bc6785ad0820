"""Rule 7: held reservations past their expiry are expired within seconds, with no request arriving.

Each pass picks due reservations and applies `Expire` commands through the same `LedgerService` as every
other change. Several sweepers may run: the reservation row lock and the core's status check make a second
expiry of the same reservation a no-op.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics
from stocksync.adapters.reservations import count_by_status, due_reservations, held_due
from stocksync.aio import cancel_and_wait, pause
from stocksync.domain.errors import Unavailable
from stocksync.domain.ledger import expiry
from stocksync.service.ledger_service import LedgerService

log = structlog.get_logger("stocksync.sweeper")


class ExpirySweeper:
    def __init__(
        self, engine: AsyncEngine, ledger: LedgerService, *, interval_s: float = 1.0, batch: int = 200
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.interval_s = interval_s
        self.batch = batch

    async def sweep_once(self) -> int:
        """Expire what is due now; returns how many reservations this pass expired."""
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            due = await due_reservations(conn, now, self.batch)
        if not due:
            return 0
        result = await self.ledger.apply([expiry(rid, loc, now) for loc, rid in due])
        expired = sum(1 for outcome in result.outcomes if outcome.outcome == "applied")
        metrics.EXPIRED.inc(expired)
        log.info("reservations_expired", expired=expired, due=len(due))
        return expired

    async def sample_gauges(self) -> None:
        """The reservation gauges: by status, and the held ones expiring within a minute or already due."""
        async with self.engine.connect() as conn:
            for status, n in (await count_by_status(conn)).items():
                metrics.RESERVATIONS.labels(status).set(n)
            expiring, overdue = await held_due(conn, self.ledger.clock(), timedelta(minutes=1))
        metrics.RESERVATIONS_EXPIRING.set(expiring)
        metrics.RESERVATIONS_OVERDUE.set(overdue)

    async def run(self, stop: asyncio.Event) -> None:
        sampling = asyncio.create_task(metrics.sample_every(stop, "reservations", self.sample_gauges))
        try:
            while not stop.is_set():
                try:
                    while await self.sweep_once() == self.batch:
                        pass
                except (Unavailable, SQLAlchemyError, OSError) as error:
                    log.warning("sweep_failed", error=f"{type(error).__name__}: {error}")
                await pause(stop, self.interval_s)
        finally:
            await cancel_and_wait(sampling)
