"""Channels as rows, and the stock of channel skus as the relay, HTTP and reconciliation read it.

A channel's definition is reference data (no movement). Replacing it leaves a refresh row in the outbox in the
same transaction: the relay then publishes every sku of the channel's old and new locations again, so the
bucket never keeps a total of a definition that is gone. What a channel may sell is never stored: it is
computed by the core (`domain.channels.channel_stock`) from the positions, which are the one truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
from sqlalchemy import any_, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stocksync.adapters import tables as t
from stocksync.adapters.database import ids_param
from stocksync.adapters.outbox import OUTBOX_CHANNEL
from stocksync.domain.channels import Channel
from stocksync.domain.errors import UnknownChannel, UnknownLocation
from stocksync.domain.model import Position, PositionKey
from stocksync.wire import CHANNEL_REFRESH, channel_refresh_msg_id


class ChannelRefresh(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a refresh row: publish the channel's every sku held at these locations."""

    channel_id: str
    location_ids: tuple[str, ...]


_CHANNELS = text(
    """
    SELECT c.channel_id, c.name, c.buffer,
           COALESCE(array_agg(cl.location_id ORDER BY cl.priority)
                    FILTER (WHERE cl.location_id IS NOT NULL), '{}') AS locations
    FROM channels c LEFT JOIN channel_locations cl USING (channel_id)
    WHERE CAST(:ids AS text[]) IS NULL OR c.channel_id = ANY(CAST(:ids AS text[]))
    GROUP BY c.channel_id ORDER BY c.channel_id
    """
)
_POSITION = [t.positions.c[name] for name in Position.__struct_fields__]
_POSITIONS = select(*_POSITION).where(
    t.positions.c.location_id == any_(ids_param("locations")), t.positions.c.sku == any_(ids_param("skus"))
)
# For a relay pass, in one statement (one round trip, one snapshot): the (channel, sku) pairs it publishes (the
# channels its changed positions belong to, each with the skus that changed there, and the skus held at the
# locations a refresh names), the definitions of those channels, a fresh version (taken only when there is a
# pair), and the positions those pairs sum; each as parallel arrays of one row, which the driver decodes in C
# (thousands of positions a pass under load: rows through SQLAlchemy's result machinery cost the relay more).
_TOUCHED_STOCK = """
    WITH pairs AS (
        SELECT cl.channel_id, k.sku
        FROM unnest($1::text[], $2::text[]) AS k(location_id, sku)
        JOIN channel_locations cl ON cl.location_id = k.location_id
        UNION
        SELECT r.channel_id, p.sku
        FROM unnest($3::text[], $4::text[]) AS r(channel_id, location_id)
        JOIN positions p ON p.location_id = r.location_id
        JOIN channels c ON c.channel_id = r.channel_id
    ), fresh AS (
        SELECT nextval('channel_availability_version') AS version WHERE EXISTS (SELECT FROM pairs)
    ), defs AS (
        SELECT c.channel_id, c.name, c.buffer,
               array_to_string(ARRAY(SELECT cl.location_id FROM channel_locations cl
                                     WHERE cl.channel_id = c.channel_id ORDER BY cl.priority), chr(31)) AS locations
        FROM channels c WHERE c.channel_id IN (SELECT channel_id FROM pairs)
    ), stock AS (
        SELECT DISTINCT p.location_id, p.sku, p.on_hand, p.reserved, p.damaged, p.safety_stock, p.version,
               p.last_count_at
        FROM pairs JOIN channel_locations cl ON cl.channel_id = pairs.channel_id
        JOIN positions p ON p.location_id = cl.location_id AND p.sku = pairs.sku
    )
    SELECT (SELECT version FROM fresh) AS version,
           (SELECT array_agg(channel_id ORDER BY channel_id, sku) FROM pairs) AS pair_channels,
           (SELECT array_agg(sku ORDER BY channel_id, sku) FROM pairs) AS pair_skus,
           (SELECT array_agg(channel_id ORDER BY channel_id) FROM defs) AS def_ids,
           (SELECT array_agg(name ORDER BY channel_id) FROM defs) AS def_names,
           (SELECT array_agg(buffer ORDER BY channel_id) FROM defs) AS def_buffers,
           (SELECT array_agg(locations ORDER BY channel_id) FROM defs) AS def_locations,
           (SELECT array_agg(location_id ORDER BY location_id, sku) FROM stock) AS p_location,
           (SELECT array_agg(sku ORDER BY location_id, sku) FROM stock) AS p_sku,
           (SELECT array_agg(on_hand ORDER BY location_id, sku) FROM stock) AS p_on_hand,
           (SELECT array_agg(reserved ORDER BY location_id, sku) FROM stock) AS p_reserved,
           (SELECT array_agg(damaged ORDER BY location_id, sku) FROM stock) AS p_damaged,
           (SELECT array_agg(safety_stock ORDER BY location_id, sku) FROM stock) AS p_safety_stock,
           (SELECT array_agg(version ORDER BY location_id, sku) FROM stock) AS p_version,
           (SELECT array_agg(last_count_at ORDER BY location_id, sku) FROM stock) AS p_last_count_at
    """
_NEXT_VERSION = text("SELECT nextval('channel_availability_version')")


def _channel(row) -> Channel:
    return Channel(channel_id=row.channel_id, name=row.name, locations=tuple(row.locations), buffer=row.buffer)


async def read_channels(conn: AsyncConnection, ids: Sequence[str] | None = None) -> list[Channel]:
    rows = await conn.execute(_CHANNELS, {"ids": list(ids) if ids is not None else None})
    return [_channel(row) for row in rows]


async def read_positions(
    conn: AsyncConnection, locations: Iterable[str], skus: Iterable[str]
) -> dict[PositionKey, Position]:
    rows = await conn.execute(_POSITIONS, {"locations": list(locations), "skus": list(skus)})
    return {(row.location_id, row.sku): Position(**row._asdict()) for row in rows}


async def put_channel(engine: AsyncEngine, channel: Channel) -> None:
    """Create or replace the channel, and leave the refresh row for its old and new locations."""
    async with engine.begin() as conn:
        known = set(
            await conn.scalars(
                select(t.locations.c.location_id).where(
                    t.locations.c.location_id == any_(ids_param("ids"))
                ),
                {"ids": list(channel.locations)},
            )
        )
        if missing := [location for location in channel.locations if location not in known]:
            raise UnknownLocation(f"location {missing[0]!r} is not known")
        old = await conn.scalars(
            select(t.channel_locations.c.location_id)
            .where(t.channel_locations.c.channel_id == channel.channel_id)
            .with_for_update()
        )
        refresh = ChannelRefresh(
            channel_id=channel.channel_id, location_ids=tuple(sorted({*old, *channel.locations}))
        )
        await conn.execute(
            text(
                "INSERT INTO channels (channel_id, name, buffer) VALUES (:id, :name, :buffer)"
                " ON CONFLICT (channel_id) DO UPDATE"
                " SET name = excluded.name, buffer = excluded.buffer, updated_at = now()"
            ),
            {"id": channel.channel_id, "name": channel.name, "buffer": channel.buffer},
        )
        await conn.execute(t.channel_locations.delete().where(t.channel_locations.c.channel_id == channel.channel_id))
        if channel.locations:
            await conn.execute(
                t.channel_locations.insert(),
                [
                    {"channel_id": channel.channel_id, "location_id": location, "priority": priority}
                    for priority, location in enumerate(channel.locations)
                ],
            )
        version = await conn.scalar(_NEXT_VERSION)
        await conn.execute(
            t.outbox.insert(),
            {
                "subject": CHANNEL_REFRESH,
                "msg_id": channel_refresh_msg_id(channel.channel_id, version),
                "payload": msgspec.json.encode(refresh),
            },
        )
        await conn.execute(func.pg_notify(OUTBOX_CHANNEL, "").select())


async def touched_stock(
    conn: AsyncConnection, changed: Sequence[PositionKey], refreshes: Sequence[ChannelRefresh]
) -> tuple[int, list[tuple[Channel, str]], dict[PositionKey, Position]]:
    """For a relay pass: a fresh version, the (channel, sku) pairs the pass changes, and the positions
    they sum, all read in one statement after the pass's rows (so they include every change the pass publishes).
    Nothing changed, or nothing that a channel sums: no statement, or no version taken."""
    if not changed and not refreshes:
        return 0, [], {}
    driver = (await conn.get_raw_connection()).driver_connection
    row = await driver.fetchrow(
        _TOUCHED_STOCK,
        [key[0] for key in changed],
        [key[1] for key in changed],
        [r.channel_id for r in refreshes for _ in r.location_ids],
        [location for r in refreshes for location in r.location_ids],
    )
    if row["version"] is None:
        return 0, [], {}
    found = {
        channel_id: Channel(
            channel_id=channel_id,
            name=name,
            locations=tuple(locations.split("\x1f")) if locations else (),
            buffer=buffer,
        )
        for channel_id, name, buffer, locations in zip(
            row["def_ids"] or (), row["def_names"] or (), row["def_buffers"] or (), row["def_locations"] or ()
        )
    }
    touched = [
        (found[channel_id], sku)
        for channel_id, sku in zip(row["pair_channels"], row["pair_skus"])
        if channel_id in found
    ]
    positions = {
        (location_id, sku): Position(
            location_id=location_id,
            sku=sku,
            on_hand=on_hand,
            reserved=reserved,
            damaged=damaged,
            safety_stock=safety_stock,
            version=version,
            last_count_at=last_count_at,
        )
        for location_id, sku, on_hand, reserved, damaged, safety_stock, version, last_count_at in zip(
            row["p_location"] or (),
            row["p_sku"] or (),
            row["p_on_hand"] or (),
            row["p_reserved"] or (),
            row["p_damaged"] or (),
            row["p_safety_stock"] or (),
            row["p_version"] or (),
            row["p_last_count_at"] or (),
        )
    }
    return int(row["version"]), touched, positions


class ChannelReader:
    """Channels and their stock as HTTP reads them: committed state, no locks, one round trip each."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def channels(self, ids: Sequence[str] | None = None) -> list[Channel]:
        async with self.engine.connect() as conn:
            return await read_channels(conn, ids)

    async def stock(self, channel_id: str, skus: Sequence[str]) -> tuple[Channel, dict[PositionKey, Position]]:
        async with self.engine.connect() as conn:
            found = await read_channels(conn, [channel_id])
            if not found:
                raise UnknownChannel(f"channel {channel_id!r} is not known")
            return found[0], await read_positions(conn, found[0].locations, skus)


async def every_channel_stock(conn: AsyncConnection) -> tuple[list[Channel], dict[PositionKey, Position]]:
    """Every channel and every position at its locations (reconciliation: one channel bucket check)."""
    found = await read_channels(conn)
    locations = sorted({location for channel in found for location in channel.locations})
    rows = await conn.execute(
        select(*_POSITION).where(t.positions.c.location_id == any_(ids_param("locations"))),
        {"locations": locations},
    )
    return found, {(row.location_id, row.sku): Position(**row._asdict()) for row in rows}


async def next_version(conn: AsyncConnection) -> int:
    return int(await conn.scalar(_NEXT_VERSION))
