"""What the ledger recorded of a scenario's events (``processed_events`` rows whose ``event_id`` starts with its
prefix), how fast, and when the pipeline has settled."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from benchmarks.infra import fetch, fetchval, stream_counts
from stocksync.wire import outcome_msg_id

_RECORDED = """
        SELECT count(*) AS n,
               count(*) FILTER (WHERE outcome = 'applied') AS applied,
               count(*) FILTER (WHERE outcome = 'rejected') AS rejected,
               extract(epoch FROM min(recorded_at)) AS t_first,
               extract(epoch FROM max(recorded_at)) AS t_last,
               extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY recorded_at)) AS t10,
               extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY recorded_at)) AS t90,
               count(*) FILTER (WHERE recorded_at <= to_timestamp($2)) AS during
        FROM processed_events WHERE event_id LIKE $1
        """
_ERRORS = (
    "SELECT error, count(*) AS n FROM processed_events WHERE event_id LIKE $1 AND error IS NOT NULL"
    " GROUP BY error ORDER BY n DESC"
)
_RELAYED = """
        SELECT sum(messages) AS n, extract(epoch FROM min(created_at)) AS t_first,
               extract(epoch FROM max(relayed_at)) AS t_relayed
        FROM outbox WHERE created_at >= to_timestamp($1)
        """


async def ledger_rate(url: str, prefix: str, wall_start: float, wall_end: float) -> dict:
    """Applied events/s from the ledger: the middle 80% of the recorded events over the time they took."""
    like = prefix + ":%"
    row = (await fetch(url, _RECORDED, like, wall_end))[0]
    errors = await fetch(url, _ERRORS, like)
    movements = await fetchval(url, "SELECT count(*) FROM movements WHERE event_id LIKE $1", like)
    outbox = (await fetch(url, _RELAYED, wall_start))[0]
    n = row["n"]
    t10, t90 = float(row["t10"] or 0), float(row["t90"] or 0)
    t_first, t_last = float(row["t_first"] or 0), float(row["t_last"] or 0)
    sustained = (0.8 * n) / (t90 - t10) if t90 > t10 else float("nan")
    during_span = wall_end - max(wall_start, t_first)
    return {
        "recorded": n,
        "applied": row["applied"],
        "rejected": row["rejected"],
        "movements": movements,
        "errors": {r["error"]: r["n"] for r in errors},
        "sustained_per_s": sustained,
        "overall_per_s": n / (t_last - t_first) if t_last > t_first else float("nan"),
        "while_publishing_per_s": row["during"] / during_span if during_span > 0.5 else float("nan"),
        "first_to_last_s": t_last - t_first,
        **_relay_rates(outbox, n, t_first, t_last),
    }


class RelayLag:
    """How far the relay is behind the ledger while a run lasts: the age of the oldest unrelayed outbox row
    (the product's own `outbox.backlog`, what the relay's gauge shows), sampled every ``interval`` seconds on
    a connection of its own (issue 13, point 1: less than 1 s behind at any moment of the burst)."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url, self.interval = url, interval
        self.behind: list[float] = []
        self.stop = asyncio.Event()

    async def __aenter__(self) -> RelayLag:
        from stocksync.adapters.database import create_engine

        self.engine = create_engine(self.url, pool_size=1)
        self.task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        from stocksync.adapters.outbox import backlog

        async with self.engine.connect() as conn:
            while not self.stop.is_set():  # not cancelled: a query cut short would leave the connection busy
                self.behind.append((await backlog(conn))[1])
                await conn.rollback()  # each sample its own snapshot
                await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task
        await self.engine.dispose()
        self.summary = {
            "samples": len(self.behind),
            "max_s": max(self.behind, default=0.0),
            "at_end_s": self.behind[-1] if self.behind else 0.0,
            "over_1s": sum(1 for b in self.behind if b >= 1.0),
        }


def _relay_rates(outbox, n: int, t_first: float, t_last: float) -> dict:
    """The relay: outbox messages published (availability, outcomes, reservations, alerts) and how far behind it was."""
    relayed, created = outbox["t_relayed"], outbox["t_first"]
    return {
        "outbox_messages": outbox["n"],
        "relayed_per_s": (
            outbox["n"] / (float(relayed) - float(created))
            if relayed and created and relayed > created
            else float("nan")
        ),
        "relay_lag_at_end_s": float(relayed) - t_last if relayed else float("nan"),
        "visible_per_s": n / (float(relayed) - t_first)
        if relayed and float(relayed) > t_first
        else float("nan"),
    }


async def settle(
    url: str, nats_url: str, prefix: str, expected: int, timeout: float, relayed: bool = True
) -> dict:
    """Until the ledger holds every distinct event, the consumer has nothing pending and (with a relay running)
    the outbox is relayed."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        recorded = await fetchval(
            url, "SELECT count(*) FROM processed_events WHERE event_id LIKE $1", prefix + ":%"
        )
        unrelayed = await fetchval(url, "SELECT count(*) FROM outbox WHERE relayed_at IS NULL")
        streams = await stream_counts(nats_url)
        state = {"recorded": recorded, "unrelayed": unrelayed, **streams}
        if recorded >= expected and (unrelayed == 0 or not relayed) and streams["pending"] == 0:
            return state | {"settled": True}
        await asyncio.sleep(0.25)
    return state | {"settled": False}


async def _relayed_messages(url: str, since: float) -> list[tuple]:
    """Each message of the outbox rows written since ``since`` (epoch s) and relayed, with its row's mark."""
    from stocksync.adapters.outbox import unpacked

    rows = await fetch(
        url,
        "SELECT id, subject, msg_id, payload, traceparent, extract(epoch FROM relayed_at) AS t FROM outbox"
        " WHERE created_at >= to_timestamp($1) AND relayed_at IS NOT NULL",
        since - 1,
    )
    return [(m, float(r["t"])) for r in rows for m in unpacked([SimpleNamespace(**r)])]


async def stage_breakdown(url: str, traces: list) -> dict:
    """Where a sample of the events spent their time: publish -> the start of the transaction that applied it
    (``processed_events.recorded_at``: stream, fetch, waiting for the batch before it) -> its outcome marked
    relayed (``outbox.relayed_at``: the transaction, its commit, the relay's pass up to the acknowledgements)
    -> the outcome's arrival (the delivery; the publisher may see it before the relay has its ack)."""
    from benchmarks.publisher import percentiles

    if not traces:
        return {}
    ids = [t[0] for t in traces]
    rows = await fetch(
        url,
        "SELECT event_id, location_id, outcome, extract(epoch FROM recorded_at) AS t FROM processed_events"
        " WHERE event_id = ANY($1::text[])",
        ids,
    )
    recorded = {r["event_id"]: float(r["t"]) for r in rows}
    outcome_ids = {outcome_msg_id(r["location_id"], r["event_id"], r["outcome"]): r["event_id"] for r in rows}
    relayed = {
        outcome_ids[m.msg_id]: t
        for m, t in await _relayed_messages(url, min(recorded.values(), default=0))
        if m.msg_id in outcome_ids
    }
    sample = [(e, p, v) for e, p, v in traces if e in recorded and e in relayed]
    return {
        "samples": len(sample),
        "publish_to_transaction": percentiles([(recorded[e] - p) * 1000 for e, p, _ in sample]),
        "transaction_to_relayed": percentiles([(relayed[e] - recorded[e]) * 1000 for e, _, _ in sample]),
        "relayed_to_visible": percentiles([(v - relayed[e]) * 1000 for e, _, v in sample]),
        "transaction_to_visible": percentiles([(v - recorded[e]) * 1000 for e, _, v in sample]),
    }
