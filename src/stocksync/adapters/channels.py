"""Channels as rows, and the stock of channel skus as the relay, HTTP and reconciliation read it.

A channel's definition is reference data (no movement). Replacing it leaves a refresh row in the outbox in the
same transaction: the relay then publishes every sku of the channel's old and new locations again, so the
bucket never keeps a total of a definition that is gone. What a channel may sell is never stored: it is
computed by the core (`domain.channels.channel_stock`) from the positions, which are the one truth.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

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
# locations a refresh names), the definitions of those channels, and a fresh version (taken only when there is a
# pair); as parallel arrays of one row, which the driver decodes in C. The positions those pairs sum are the
# relay's own (`ChannelStock`): it saw every change of them in the rows it relayed; only those it has not seen
# yet are read, by `_POSITIONS_OF_KEYS`.
_TOUCHED = """
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
    ), ordered_pairs AS (
        SELECT array_agg(channel_id ORDER BY channel_id, sku) AS channels,
               array_agg(sku ORDER BY channel_id, sku) AS skus
        FROM pairs
    ), ordered_defs AS (
        SELECT array_agg(channel_id ORDER BY channel_id) AS ids, array_agg(name ORDER BY channel_id) AS names,
               array_agg(buffer ORDER BY channel_id) AS buffers,
               array_agg(locations ORDER BY channel_id) AS locations
        FROM defs
    )
    SELECT (SELECT version FROM fresh) AS version, ordered_pairs.channels AS pair_channels,
           ordered_pairs.skus AS pair_skus, ordered_defs.ids AS def_ids, ordered_defs.names AS def_names,
           ordered_defs.buffers AS def_buffers, ordered_defs.locations AS def_locations
    FROM ordered_pairs, ordered_defs
    """
_POSITIONS_OF_KEYS = """
    SELECT p.location_id, p.sku, p.on_hand, p.reserved, p.damaged, p.safety_stock, p.version, p.last_count_at
    FROM unnest($1::text[], $2::text[]) AS k(location_id, sku)
    JOIN positions p ON p.location_id = k.location_id AND p.sku = k.sku
    """


class ChannelStock:
    """The positions channels sum, as the relay last saw them: read from the database the first time a pass
    needs one, then kept up to date from the rows it relays (each changed position's new state, with its
    version); positions no channel has needed are not kept (without channels, nothing is). It is the leader's: a
    new leader starts empty (another may have relayed meanwhile). A position's state never goes back to an older
    version, so a row relayed late after a read never undoes the newer state read.

    Bounded for a leader that runs for months: past ``max_keys`` the positions least recently needed by a pass
    are let go (never one the pass at hand needs), and read from the database again when needed."""

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self.positions: OrderedDict[PositionKey, Position] = OrderedDict()

    def saw(self, position: Position) -> None:
        known = self.positions.get(position.key)
        if known is None or position.version >= known.version:
            self.positions[position.key] = position

    def holds(self, key: PositionKey) -> bool:
        return key in self.positions

    def forget(self, key: PositionKey) -> None:
        self.positions.pop(key, None)

    def clear(self) -> None:
        self.positions.clear()

    def missing(self, keys: Iterable[PositionKey]) -> tuple[list[PositionKey], list[PositionKey]]:
        """The keys a pass needs (each marked as just used) and those of them not held."""
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            if key in self.positions:
                self.positions.move_to_end(key)
        return wanted, [key for key in wanted if key not in self.positions]

    def remember(self, wanted: int, missing: Sequence[PositionKey], found: Iterable[Position]) -> None:
        """Keep what was read for ``missing`` (one that does not exist is a position of zeros, version 0: its
        first change comes as a row), then let the least recently used go, keeping the ``wanted`` last used."""
        for position in found:
            self.saw(position)
        for location_id, sku in missing:
            if (location_id, sku) not in self.positions:
                self.positions[(location_id, sku)] = Position(location_id=location_id, sku=sku)
        while len(self.positions) > max(self.max_keys, wanted):
            self.positions.popitem(last=False)

    async def read_missing(self, conn: AsyncConnection, keys: Iterable[PositionKey]) -> int:
        """Read the positions of ``keys`` not held; returns how many were read."""
        wanted, missing = self.missing(keys)
        if not missing:
            return 0
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await driver.fetch(_POSITIONS_OF_KEYS, [k[0] for k in missing], [k[1] for k in missing])
        self.remember(len(wanted), missing, (Position(**dict(row.items())) for row in rows))
        return len(missing)


_NEXT_VERSION = text("SELECT nextval('channel_availability_version')")
_CHANNEL_LOCATIONS = text("SELECT DISTINCT location_id FROM channel_locations")


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
    conn: AsyncConnection,
    changed: Sequence[PositionKey],
    refreshes: Sequence[ChannelRefresh],
    stock: ChannelStock | None = None,
) -> tuple[int, list[tuple[Channel, str]], Mapping[PositionKey, Position]]:
    """For a relay pass: a fresh version, the (channel, sku) pairs the pass changes, and the positions they sum,
    read after the pass's rows (so they include every change the pass publishes): from ``stock`` (the relay's,
    already holding the pass's rows) where it has them, else from the database. Nothing changed, or nothing
    that a channel sums: no version taken."""
    if not changed and not refreshes:
        return 0, [], {}
    driver = (await conn.get_raw_connection()).driver_connection
    row = await driver.fetchrow(
        _TOUCHED,
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
    stock = stock if stock is not None else ChannelStock()
    await stock.read_missing(
        conn, ((location, sku) for channel, sku in touched for location in channel.locations)
    )
    return int(row["version"]), touched, stock.positions


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


async def channel_locations(conn: AsyncConnection) -> frozenset[str]:
    """Every location some channel sums (the relay's: which changed positions need the channels read)."""
    return frozenset(await conn.scalars(_CHANNEL_LOCATIONS))


async def next_version(conn: AsyncConnection) -> int:
    return int(await conn.scalar(_NEXT_VERSION))
