"""The stronger baseline (issue 13, point 5): what a competent, straightforward service does, in raw asyncpg.

``python -m benchmarks.naive_sql --database URL --nats URL [--concurrency 16]``

No stocksync code on the hot path: each event is decoded as plain JSON and applied in a transaction of its
own, on one of ``--concurrency`` connections (16, each with its own task), with hand-written SQL: the
idempotency row (``processed_events``, ``ON CONFLICT DO NOTHING``: a repeat is acknowledged and moves
nothing), one upsert of the position per line (locked in sku order so that two events never deadlock), one
movement per line, and the reservation rows for reserve, collect and cancel. It writes no outbox and
publishes nothing (nobody would see its changes), skips the rules a first version would (counts superseding
older events, alerts, body conflicts), and acknowledges after the commit. It lives in the bench, not in the
product, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from datetime import datetime, timedelta

import asyncpg
import msgspec
from nats.aio.msg import Msg

from benchmarks.pull import arguments, serve

_decode = msgspec.json.decode

RECORD = """INSERT INTO processed_events (event_id, location_id, body_hash, type, outcome,
    reservation_id, recorded_at) VALUES ($1, $2, $3, $4, 'applied', $5, now())
    ON CONFLICT DO NOTHING RETURNING 1"""
REJECT = """UPDATE processed_events SET outcome = 'rejected', error = $3
    WHERE event_id = $1 AND location_id = $2"""
# The CHECK constraints see the row to insert before ON CONFLICT turns it into an update, hence greatest(): a
# release can only meet a position that its reservation made.
MOVE = """WITH moved AS (
    INSERT INTO positions AS p (location_id, sku, on_hand, reserved, damaged, version, updated_at)
    VALUES ($1, $2, $3, greatest($4, 0), $5, 1, now())
    ON CONFLICT (location_id, sku) DO UPDATE SET on_hand = p.on_hand + $3, reserved = p.reserved + $4,
        damaged = p.damaged + $5, version = p.version + 1, updated_at = now()
    RETURNING 1)
INSERT INTO movements (event_id, type, location_id, sku, on_hand_delta, reserved_delta, damaged_delta, reason,
    reservation_id, occurred_at, recorded_at)
SELECT $6, $7, $1, $2, $3, $4, $5, $8, $9, $10, now() FROM moved"""
AVAILABLE = """SELECT sku, on_hand - reserved - safety_stock FROM positions
    WHERE location_id = $1 AND sku = ANY($2::text[]) ORDER BY sku FOR UPDATE"""
ON_HAND = "SELECT on_hand FROM positions WHERE location_id = $1 AND sku = $2 FOR UPDATE"
HOLD = """INSERT INTO reservations (reservation_id, location_id, channel, status, event_id, created_at,
    expires_at, updated_at) VALUES ($1, $2, $3, 'held', $4, now(), $5, now())"""
HOLD_LINE = """INSERT INTO reservation_lines (reservation_id, location_id, sku, line_no, qty)
    VALUES ($1, $2, $3, $4, $5)"""
HELD = """SELECT r.status, array_agg(l.sku ORDER BY l.sku), array_agg(l.qty ORDER BY l.sku)
    FROM reservations r JOIN reservation_lines l USING (reservation_id, location_id)
    WHERE r.reservation_id = $1 AND r.location_id = $2 GROUP BY r.status"""
SETTLE = """UPDATE reservations SET status = $3, updated_at = now()
    WHERE reservation_id = $1 AND location_id = $2 AND status = 'held'"""


async def apply(conn: asyncpg.Connection, event: dict, body: bytes) -> None:
    """One event in one transaction; a repeat records nothing and moves nothing."""
    kind, location, event_id = event["type"], event["location_id"], event["event_id"]
    occurred = datetime.fromisoformat(event["occurred_at"])
    rid = event.get("reservation_id")
    async with conn.transaction():
        if not await conn.fetchval(RECORD, event_id, location, hashlib.sha256(body).digest(), kind, rid):
            return

        async def move(sku: str, on_hand: int, reserved: int = 0, damaged: int = 0, reason=None) -> None:
            args = (location, sku, on_hand, reserved, damaged, event_id, kind, reason, rid, occurred)
            await conn.execute(MOVE, *args)

        lines = sorted(event.get("lines") or [], key=lambda line: line["sku"])
        if kind == "sale":
            for line in lines:
                await move(line["sku"], -line["qty"])
        elif kind == "receipt":
            for line in lines:
                await move(line["sku"], line["qty"])
        elif kind == "return":
            for line in lines:
                damaged = line.get("disposition") == "damaged"
                await move(line["sku"], 0 if damaged else line["qty"], damaged=line["qty"] if damaged else 0)
        elif kind == "adjust":
            for line in lines:
                await move(line["sku"], line["delta"], reason=line["reason"])
        elif kind == "count":
            for line in lines:
                on_hand = await conn.fetchval(ON_HAND, location, line["sku"]) or 0
                await move(line["sku"], line["counted"] - on_hand)
        elif kind == "reserve":
            await reserve(conn, event, lines, move)
        elif kind in ("collect", "cancel"):
            await settle(conn, event, move)


async def reserve(conn: asyncpg.Connection, event: dict, lines: list[dict], move) -> None:
    location, rid = event["location_id"], event["reservation_id"]
    available = dict(await conn.fetch(AVAILABLE, location, [line["sku"] for line in lines]))
    if any(line["qty"] > available.get(line["sku"], 0) for line in lines):
        await conn.execute(REJECT, event["event_id"], location, "insufficient_stock")
        return
    expires = datetime.fromisoformat(event["occurred_at"]) + timedelta(seconds=event.get("ttl_seconds", 7200))
    await conn.execute(HOLD, rid, location, event["channel"], event["event_id"], expires)
    for n, line in enumerate(lines):
        await conn.execute(HOLD_LINE, rid, location, line["sku"], n, line["qty"])
        await move(line["sku"], 0, reserved=line["qty"])


async def settle(conn: asyncpg.Connection, event: dict, move) -> None:
    location, rid, kind = event["location_id"], event["reservation_id"], event["type"]
    held = await conn.fetchrow(HELD, rid, location)
    if held is None or held[0] != "held":
        await conn.execute(REJECT, event["event_id"], location, "reservation_not_held")
        return
    await conn.execute(SETTLE, rid, location, "collected" if kind == "collect" else "cancelled")
    for sku, qty in zip(held[1], held[2], strict=True):
        await move(sku, -qty if kind == "collect" else 0, reserved=-qty)


async def run(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.database, min_size=args.concurrency, max_size=args.concurrency)
    counts = {"applied": 0, "retried": 0}

    async def apply_one(msg: Msg) -> None:
        while True:
            try:
                async with pool.acquire() as conn:
                    await apply(conn, _decode(msg.data), msg.data)
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                counts["retried"] += 1
        counts["applied"] += 1

    await serve(args.nats, "stocksync-bench-naive-sql", args.concurrency, apply_one, counts)
    await pool.close()


def main() -> None:
    asyncio.run(run(arguments(concurrency=16)))


if __name__ == "__main__":
    main()
