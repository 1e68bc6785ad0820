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
# The channels a set of changed positions belongs to, each with the skus that changed there, and the skus of
# the locations a refresh names: the (channel, sku) pairs a relay pass publishes.
_TOUCHED = text(
    """
    SELECT DISTINCT cl.channel_id, k.sku
    FROM unnest(CAST(:locations AS text[]), CAST(:skus AS text[])) AS k(location_id, sku)
    JOIN channel_locations cl ON cl.location_id = k.location_id
    UNION
    SELECT r.channel_id, p.sku
    FROM unnest(CAST(:refresh_channels AS text[]), CAST(:refresh_locations AS text[]))
         AS r(channel_id, location_id)
    JOIN positions p ON p.location_id = r.location_id
    JOIN channels c ON c.channel_id = r.channel_id
    """
)
_NEXT_VERSION = text("SELECT nextval('channel_availability_version')")


def _channel(row) -> Channel:
    return Channel(
        channel_id=row.channel_id, name=row.name, locations=tuple(row.locations), buffer=row.buffer
    )


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
                select(t.locations.c.location_id).where(t.locations.c.location_id == any_(ids_param("ids"))),
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
        await conn.execute(
            t.channel_locations.delete().where(t.channel_locations.c.channel_id == channel.channel_id)
        )
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
    they sum, all read after the pass's rows (so they include every change the pass publishes)."""
    if not changed and not refreshes:
        return 0, [], {}
    pairs = (
        await conn.execute(
            _TOUCHED,
            {
                "locations": [key[0] for key in changed],
                "skus": [key[1] for key in changed],
                "refresh_channels": [r.channel_id for r in refreshes for _ in r.location_ids],
                "refresh_locations": [location for r in refreshes for location in r.location_ids],
            },
        )
    ).all()
    if not pairs:
        return 0, [], {}
    channels = {c.channel_id: c for c in await read_channels(conn, sorted({row.channel_id for row in pairs}))}
    version = int(await conn.scalar(_NEXT_VERSION))
    locations = {location for channel in channels.values() for location in channel.locations}
    positions = await read_positions(conn, locations, {row.sku for row in pairs})
    touched = [(channels[row.channel_id], row.sku) for row in pairs if row.channel_id in channels]
    return version, touched, positions


class ChannelReader:
    """Channels and their stock as HTTP reads them: committed state, no locks, one round trip each."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def channels(self, ids: Sequence[str] | None = None) -> list[Channel]:
        async with self.engine.connect() as conn:
            return await read_channels(conn, ids)

    async def stock(
        self, channel_id: str, skus: Sequence[str]
    ) -> tuple[Channel, dict[PositionKey, Position]]:
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
