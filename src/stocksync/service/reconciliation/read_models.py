"""Check 4: what the ledger publishes. Outbox rows the relay has not sent after the grace, and availability
bucket entries that do not say what the ledger says.

The bucket is compared in SQL: its entries stream in (last value per key, a batch per fetch) into a temporary
table on one connection, and a full outer join with positions returns only the entries that differ and the
positions with none. The buckets source STOCKSYNC_OUT asynchronously: each check first waits until its bucket
has taken what the out stream holds (`sourced`). Repairs go through the publishing paths: the relay's own
`relay_once` under its leader lock, and the ledger's numbers published on the out stream over an older version
(`publish_if_newer`). Only where the out stream holds that version or a newer one already (the bucket lost
its entry, or holds numbers the ledger does not agree with) is the bucket written directly, once it has taken
the out stream's last message: whatever it sources after that is newer than what was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from stocksync.adapters import channels as channels_sql
from stocksync.adapters import reconciliation as sql
from stocksync.adapters.bucket import publish_if_newer, put_if_newer, sourced
from stocksync.adapters.outbox import unpacked
from stocksync.domain.channels import ChannelStock, channel_stock
from stocksync.domain.events import decoder
from stocksync.domain.model import Position
from stocksync.domain.reconciliation import (
    KV_MISSING,
    KV_STALE,
    KV_UNKNOWN,
    Finding,
    Numbers,
    channel_finding,
    entry_problem,
    kv_finding,
    ledger_numbers,
    outbox_finding,
)
from stocksync.messages import ChannelAvailabilityMessage, availability_message
from stocksync.service.outbox import Publication
from stocksync.service.reconciliation.context import Context, Findings, not_repaired, repaired
from stocksync.service.reconciliation.inbound import read_batches
from stocksync.wire import (
    AVAILABILITY_BUCKET,
    AVAILABILITY_KV_STREAM,
    AVAILABILITY_KV_SUBJECT,
    CHANNEL_BUCKET,
    CHANNEL_KV_STREAM,
    CHANNEL_KV_SUBJECT,
    availability_msg_id,
    availability_subject,
    channel_msg_id,
    channel_subject,
    outbound_target,
    split_availability_key,
)

# -- the outbox --------------------------------------------------------------------------------------------------


async def check_outbox(ctx: Context) -> Findings:
    """Rows unrelayed since before the grace: the relay is down, wedged, or cannot reach NATS. One finding per
    message (a bundle row holds a transaction's)."""
    ctx.progress.phase("outbox")
    async with ctx.engine.connect() as conn:
        async for rows in sql.stuck_outbox(conn, ctx.cutoff):
            found = [
                (
                    r.id,
                    outbox_finding(
                        row_id=r.id,
                        msg_id=m.msg_id,
                        created_at=r.created_at,
                        target=outbound_target(m.subject),
                    ),
                )
                for r in rows
                for m in unpacked([r])
            ]
            yield await _relay(ctx, found) if ctx.options.repair else [f for _, f in found]


async def _relay(ctx: Context, found: list[tuple[int, Finding]]) -> list[Finding]:
    """Publish through the relay itself, holding its leader lock so no running relay is overtaken."""
    if ctx.relay_all is None or not await ctx.relay_all():
        return [not_repaired(f, "a running relay holds the leader lock; restart it") for _, f in found]
    async with ctx.engine.connect() as conn:
        pending = await sql.unrelayed(conn, list({row_id for row_id, _ in found}))
    return [
        not_repaired(f, "still unrelayed") if row_id in pending else repaired(f, "published by the relay")
        for row_id, f in found
    ]


# -- the availability bucket -----------------------------------------------------------------------------------


async def check_bucket(ctx: Context) -> Findings:
    """Every bucket entry against its position, and every position against its entry."""
    await sourced(ctx.js, AVAILABILITY_BUCKET)  # not in time: what differs is read again before it counts
    info = await ctx.js.stream_info(AVAILABILITY_KV_STREAM)
    ctx.progress.phase("availability bucket", info.state.messages)
    async with ctx.engine.begin() as conn:
        await sql.create_bucket_table(conn)
        async for msgs in read_batches(
            ctx.js, AVAILABILITY_KV_STREAM, f"{AVAILABILITY_KV_SUBJECT}>", last_per_subject=True
        ):
            yield await _load_entries(conn, msgs)
            ctx.advance("bucket_entries", len(msgs))
        async for rows in sql.bucket_differences(conn):
            findings = await _still_behind(ctx, [f for row in rows if (f := _judge(row))])
            yield await _rewrite(ctx, findings) if ctx.options.repair else findings


async def _load_entries(conn: AsyncConnection, msgs: Sequence[Msg]) -> list[Finding]:
    """Copy a batch of entries into the temporary table; a key that names no position is reported at once."""
    prefix = len(AVAILABILITY_KV_SUBJECT)
    columns: dict[str, list] = {
        name: [] for name in ("location_id", "sku", "problem", *sql.BUCKET_NUMBERS, "available")
    }
    unknown = []
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        key = msg.subject[prefix:]
        position = split_availability_key(key)
        if position is None:
            unknown.append(Finding(kind=KV_UNKNOWN, detail=f"bucket key {key!r} is not <location_id>.<sku>"))
            continue
        entry = _decode(msg.data)
        for name, value in (
            ("location_id", position[0]),
            ("sku", position[1]),
            ("problem", entry_problem(entry)),
        ):
            columns[name].append(value)
        for name in (*sql.BUCKET_NUMBERS, "available"):
            columns[name].append(getattr(entry, name) if entry else None)
    await sql.insert_bucket_entries(conn, columns)
    return unknown


_decode_numbers = decoder(Numbers)
_decode_channel = decoder(ChannelAvailabilityMessage)


def _decode(data: bytes) -> Numbers | None:
    try:
        return _decode_numbers(data)
    except msgspec.DecodeError:  # ValidationError and TooDeep are DecodeErrors
        return None


def _judge(row: Row) -> Finding | None:
    ledger = ledger_numbers(*(getattr(row, n) for n in sql.BUCKET_NUMBERS)) if row.in_ledger else None
    entry = (
        Numbers(**{n: getattr(row, f"k_{n}") for n in (*sql.BUCKET_NUMBERS, "available")})
        if (row.in_bucket and row.problem is None)
        else None
    )
    return kv_finding(
        row.location_id, row.sku, ledger, entry, problem=row.problem, in_flight=bool(row.in_flight)
    )


async def _still_behind(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """Drop the entries read behind (or absent) whose change the relay wrote while the bucket was scanned:
    each is read again, and only one still older than the version its position had is stale or missing."""
    behind = [f for f in findings if f.kind == KV_MISSING or (f.kind == KV_STALE and _behind(f))]
    if not behind:
        return findings
    kv = await ctx.js.key_value(AVAILABILITY_BUCKET)

    async def caught_up(finding: Finding) -> bool:
        try:
            entry = await kv.get(f"{finding.location_id}.{finding.sku}")
        except KeyNotFoundError:
            return False
        version = _entry_version(entry.value)
        return version is not None and version >= (finding.expected or 0)

    done = {id(f) for f, ok in zip(behind, await asyncio.gather(*map(caught_up, behind)), strict=True) if ok}
    return [f for f in findings if id(f) not in done]


def _behind(finding: Finding) -> bool:
    return finding.actual is not None and finding.expected is not None and finding.actual < finding.expected


async def _rewrite(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """Publish the ledger's numbers for each stale or missing entry, read fresh (a sweep may have moved
    them); where the out stream has that version already, write them to the bucket once it has taken it."""
    targets = [(f.location_id, f.sku) for f in findings if f.kind in (KV_STALE, KV_MISSING)]
    if not targets:
        return findings
    positions = await _positions(ctx, targets)
    rows = {key: _publication(*found) for key, found in positions.items()}
    published = dict(zip(rows, await asyncio.gather(*(publish_if_newer(ctx.js, r) for r in rows.values()))))
    await sourced(ctx.js, AVAILABILITY_BUCKET)
    kv = await ctx.js.key_value(AVAILABILITY_BUCKET)

    async def rewrite(finding: Finding) -> Finding:
        row = rows.get((finding.location_id, finding.sku))
        if finding.kind not in (KV_STALE, KV_MISSING) or row is None:
            return finding
        if published[(finding.location_id, finding.sku)]:
            return repaired(finding, f"republished from the ledger at version {row.version}")
        await overwrite(kv, row.kv_key, row.version, row.payload)
        return repaired(finding, f"bucket rewritten from the ledger at version {row.version}")

    return list(await asyncio.gather(*(rewrite(f) for f in findings)))


def _publication(position: Position, as_of: datetime) -> Publication:
    """The availability message the relay would publish for this position (spec section 3)."""
    loc, sku, version = position.location_id, position.sku, position.version
    return Publication(
        subject=availability_subject(loc, sku),
        msg_id=availability_msg_id(loc, sku, version),
        payload=msgspec.json.encode(availability_message(position, as_of)),
        kv_key=f"{loc}.{sku}",
        version=version,
        available=position.available,
    )


async def _positions(ctx: Context, keys: list[tuple]) -> dict[tuple, tuple[Position, datetime]]:
    async with ctx.engine.connect() as conn:
        return await sql.positions_as_of(conn, keys)


async def overwrite(kv: KeyValue, key: str, version: int, payload: bytes) -> None:
    """The ledger is the truth: `put_if_newer` over a missing or older entry; otherwise (same or newer version
    with other numbers, or no valid body) replace it at the revision read, trying again if a writer got in."""
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        held = _entry_version(entry.value) if entry else None
        if entry is None or (held is not None and held < version):
            await put_if_newer(kv, key, version, payload)
            return
        try:
            await kv.update(key, payload, last=entry.revision)
            return
        except KeyWrongLastSequenceError:
            continue


# -- the channel bucket -------------------------------------------------------------------------------------


async def check_channel_bucket(ctx: Context) -> Findings:
    """Every channel entry against what the positions say the channel may sell, and every channel sku held
    somewhere against its entry. A difference is read again (entry and positions) before it is reported:
    the relay may have published that sku while the bucket was scanned."""
    await sourced(ctx.js, CHANNEL_BUCKET)
    info = await ctx.js.stream_info(CHANNEL_KV_STREAM)
    ctx.progress.phase("channel bucket", info.state.messages)
    entries: dict[tuple[str, str], int | None] = {}
    entries_of = read_batches(ctx.js, CHANNEL_KV_STREAM, f"{CHANNEL_KV_SUBJECT}>", last_per_subject=True)
    async for msgs in entries_of:
        prefix = len(CHANNEL_KV_SUBJECT)
        entries.update(
            _channel_entry(msg.subject[prefix:], msg.data)
            for msg in msgs
            if (msg.headers or {}).get("KV-Operation") is None
        )
        ctx.advance("channel_bucket_entries", len(msgs))
    expected = await _channel_stock(ctx, entries)
    if expected:
        ctx.advance("channel_skus", len(expected))
    findings = [
        finding
        for stock in expected
        if (finding := channel_finding(stock, entries.get((stock.channel_id, stock.sku))))
    ]
    if findings:
        findings = await _channel_still_different(ctx, findings)
    yield await _republish(ctx, findings) if ctx.options.repair else findings


def _channel_entry(key: str, data: bytes | None) -> tuple[tuple[str, str], int | None]:
    """The (channel_id, sku) of a key, and the ``available`` its entry says (None: not a channel body)."""
    channel_id, _, sku = key.partition(".")
    try:
        return (channel_id, sku), _decode_channel(data or b"").available
    except msgspec.DecodeError:
        return (channel_id, sku), None


async def _channel_stock(ctx: Context, also: Iterable[tuple[str, str]] = ()) -> list[ChannelStock]:
    """What each channel may sell of every sku held at its locations (and of the ``also`` pairs)."""
    async with ctx.engine.connect() as conn:
        found, positions = await channels_sql.every_channel_stock(conn)
    pairs = {(c.channel_id, sku) for c in found for (location, sku) in positions if location in c.locations}
    by_id = {c.channel_id: c for c in found}
    pairs |= {pair for pair in also if pair[0] in by_id}
    return [channel_stock(by_id[channel_id], sku, positions) for channel_id, sku in sorted(pairs)]


async def _channel_still_different(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """Each finding judged again on its entry read anew, then on the positions read anew, all at once."""
    kv = await ctx.js.key_value(CHANNEL_BUCKET)

    async def entry_now(finding: Finding) -> int | None:
        key = f"{finding.channel_id}.{finding.sku}"
        try:
            return _channel_entry(key, (await kv.get(key)).value)[1]
        except KeyNotFoundError:
            return None

    entries = await asyncio.gather(*map(entry_now, findings))
    fresh = await _channel_stock(ctx, [(f.channel_id, f.sku) for f in findings])
    stock = {(s.channel_id, s.sku): s for s in fresh}
    pairs = zip(findings, entries, strict=True)
    judged = (channel_finding(stock[(f.channel_id, f.sku)], entry) for f, entry in pairs)
    return [f for f in judged if f is not None]


async def _republish(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """Publish what the ledger says under a fresh version (newer than any), for the bucket to source."""
    if not findings:
        return findings
    fresh = await _channel_stock(ctx, [(f.channel_id, f.sku) for f in findings])
    stock = {(s.channel_id, s.sku): s for s in fresh}
    async with ctx.engine.connect() as conn:
        version = await channels_sql.next_version(conn)
        await conn.commit()
    fixed = []
    for finding in findings:
        total = stock[(finding.channel_id, finding.sku)].available
        message = ChannelAvailabilityMessage(
            channel_id=finding.channel_id, sku=finding.sku, available=total, version=version, as_of=ctx.now
        )
        row = Publication(
            subject=channel_subject(finding.channel_id, finding.sku),
            msg_id=channel_msg_id(finding.channel_id, finding.sku, version),
            payload=msgspec.json.encode(message),
            kv_key=f"{finding.channel_id}.{finding.sku}",
            version=version,
            available=total,
        )
        await publish_if_newer(ctx.js, row)
        fixed.append(repaired(finding, f"channel entry republished from the ledger at version {version}"))
    await sourced(ctx.js, CHANNEL_BUCKET)
    return fixed


def _entry_version(value: bytes | None) -> int | None:
    """The version of a valid availability body; None for one that is not (it is replaced, not compared)."""
    entry = _decode(value or b"")
    return entry.version if entry else None
