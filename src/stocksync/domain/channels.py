"""Channels (spec section 7): what a sales channel may sell, summed over its locations. Pure, no I/O.

A channel sells from a set of locations in priority order and keeps ``buffer`` units back (a margin against
counts that are wrong or sales not yet sent). A location may be in several channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from msgspec import Struct

from stocksync_contract.messages import LocationAvailable

from .model import Position, PositionKey


class Channel(Struct, frozen=True, kw_only=True):
    channel_id: str
    name: str
    locations: tuple[str, ...]  # in priority order: the first is preferred
    buffer: int = 0


class ChannelStock(Struct, frozen=True, kw_only=True):
    """One sku as a channel sees it: its sellable total and what each location adds, in priority order."""

    channel_id: str
    sku: str
    available: int
    locations: tuple[LocationAvailable, ...]


def channel_available(buffer: int, availables: Sequence[int]) -> int:
    """``max(0, Σ available at its locations − buffer)``: what the channel may still sell."""
    return max(0, sum(availables) - buffer)


def channel_total(channel: Channel, sku: str, positions: Mapping[PositionKey, Position]) -> int:
    """`channel_stock`'s ``available`` alone: what the relay publishes, without the per-location lines."""
    return channel_available(
        channel.buffer,
        [p.available for location_id in channel.locations if (p := positions.get((location_id, sku)))],
    )


def channel_stock(channel: Channel, sku: str, positions: Mapping[PositionKey, Position]) -> ChannelStock:
    """A sku never seen at a location adds nothing there (a position of zeros)."""
    at = tuple(
        LocationAvailable(
            location_id=location_id,
            available=position.available if (position := positions.get((location_id, sku))) else 0,
        )
        for location_id in channel.locations
    )
    return ChannelStock(
        channel_id=channel.channel_id,
        sku=sku,
        available=channel_available(channel.buffer, [line.available for line in at]),
        locations=at,
    )
