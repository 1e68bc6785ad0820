"""Everything stocksync puts on NATS, in one place (spec section 3): stream, consumer and bucket names, every
subject built and parsed, the message ids, and the dead letter.

What a client needs of it (names, the subjects it uses, an event's body, a key's connect options) is defined
once in the client distribution's `stocksync_contract.wire` and re-exported here. Contracts, the worker, the
relay and reconciliation import this module and nothing of each other. It does no I/O: a subject is a string,
and ids cannot hold a dot (`ID_PATTERN`), so every split is unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

import msgspec

from stocksync.domain.access import EVENT_GRANTS
from stocksync.domain.events import ID_PATTERN
from stocksync_contract.wire import (
    AVAILABILITY_BUCKET,
    CHANNEL_BUCKET,
    DLQ_STREAM,
    IN_STREAM,
    MSG_ID,
    ORDER_ACTIONS,
    ORDER_TOKEN,
    OUT_STREAM,
    alert_subject,
    availability_key,
    availability_subject,
    channel_key,
    channel_subject,
    event_body,
    event_subject,
    inbound_subject,
    inbox_prefix,
    key_options,
    order_inbound_subject,
    order_subject,
    outcome_subject,
    reservation_subject,
)

AVAILABILITY_KV_STREAM = f"KV_{AVAILABILITY_BUCKET}"
AVAILABILITY_KV_SUBJECT = f"$KV.{AVAILABILITY_BUCKET}."  # + the key: the bucket's stream subject for it
CHANNEL_KV_STREAM = f"KV_{CHANNEL_BUCKET}"
CHANNEL_KV_SUBJECT = f"$KV.{CHANNEL_BUCKET}."
WORKER_CONSUMER = "stocksync-worker"
# Each bucket's stream sources STOCKSYNC_OUT: the out stream's subjects it takes, its stream, its subject
# prefix (the two tokens after the first three are the key).
BUCKET_SOURCES = {
    AVAILABILITY_BUCKET: ("stocksync.out.availability.*.*", AVAILABILITY_KV_STREAM, AVAILABILITY_KV_SUBJECT),
    CHANNEL_BUCKET: ("stocksync.out.channel.*.*", CHANNEL_KV_STREAM, CHANNEL_KV_SUBJECT),
}

IN_ALL, OUT_ALL, DLQ_ALL = "stocksync.in.>", "stocksync.out.>", "stocksync.dlq.>"
AVAILABILITY_ALL = "stocksync.out.availability.>"
CHANNEL_ALL = "stocksync.out.channel.>"
NO_LOCATION = "_"  # the dead-letter subject's token when the refused subject names no valid location
# An outbox row on this subject is never published: it asks the relay to publish a channel's skus again.
CHANNEL_REFRESH = "stocksync.internal.channel_refresh"
# An outbox row on this subject holds a transaction's messages packed together (`adapters.outbox.packed`).
OUTBOX_BUNDLE = "stocksync.internal.bundle"

__all__ = [  # the contract's names too, for the server's modules that import them from here
    "AVAILABILITY_ALL",
    "AVAILABILITY_BUCKET",
    "AVAILABILITY_KV_STREAM",
    "AVAILABILITY_KV_SUBJECT",
    "BUCKET_SOURCES",
    "CHANNEL_ALL",
    "CHANNEL_BUCKET",
    "CHANNEL_KV_STREAM",
    "CHANNEL_KV_SUBJECT",
    "CHANNEL_REFRESH",
    "DLQ_ALL",
    "DLQ_STREAM",
    "DeadLetter",
    "IN_ALL",
    "IN_STREAM",
    "MSG_ID",
    "NO_LOCATION",
    "NatsPermissions",
    "ORDER_ACTIONS",
    "ORDER_TOKEN",
    "OUT_ALL",
    "OUTBOX_BUNDLE",
    "OUT_STREAM",
    "WORKER_CONSUMER",
    "alert_msg_id",
    "alert_subject",
    "availability_key",
    "availability_msg_id",
    "availability_subject",
    "channel_key",
    "channel_msg_id",
    "channel_refresh_msg_id",
    "channel_subject",
    "dlq_msg_id",
    "dlq_subject",
    "event_body",
    "event_subject",
    "header_event_id",
    "inbound_parts",
    "inbound_subject",
    "inbox_prefix",
    "is_order_subject",
    "key_options",
    "nats_permissions",
    "order_inbound_parts",
    "order_inbound_subject",
    "order_msg_id",
    "order_subject",
    "outbound_target",
    "outcome_msg_id",
    "outcome_subject",
    "reservation_msg_id",
    "reservation_subject",
    "split_availability_key",
    "subject_location",
]

_ID = re.compile(ID_PATTERN)


# -- subjects the server alone builds or parses ------------------------------------------------------------


def is_order_subject(subject: str) -> bool:
    """``stocksync.in._order.…``: an order message (valid or not), not a location's event."""
    return subject.split(".")[:3] == ["stocksync", "in", ORDER_TOKEN]


def order_inbound_parts(subject: str) -> tuple[str, str] | None:
    """(channel_id, action) of ``stocksync.in._order.<channel_id>.<action>``; None for any other shape."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[:3] == ["stocksync", "in", ORDER_TOKEN]:
        return tokens[3], tokens[4]
    return None


def dlq_subject(location_id: str | None) -> str:
    return f"stocksync.dlq.{location_id or NO_LOCATION}"


def inbound_parts(subject: str) -> tuple[str, str] | None:
    """(location_id, type) of ``stocksync.in.<location_id>.<type>``; None for any other shape."""
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[:2] == ["stocksync", "in"]:
        return tokens[2], tokens[3]
    return None


def subject_location(subject: str) -> str | None:
    """The location an inbound or dead-letter subject names (``stocksync.in|dlq.<location_id>…``), if valid."""
    tokens = subject.split(".")
    return tokens[2] if len(tokens) > 2 and _ID.match(tokens[2]) else None


def outbound_target(subject: str) -> tuple[str | None, str | None, str | None]:
    """(location_id, sku, reservation_id) an outbound subject names."""
    tokens = subject.split(".")
    kind, rest = (tokens[2], tokens[3:]) if len(tokens) > 3 else ("", [])
    if kind == "availability" and len(rest) == 2:
        return rest[0], rest[1], None
    if kind in ("alert", "outcome") and len(rest) == 1:
        return rest[0], None, None
    if kind == "reservation" and len(rest) == 1:
        return None, None, rest[0]
    return None, None, None


# -- the availability bucket --------------------------------------------------------------------------------------


def split_availability_key(key: str) -> tuple[str, str] | None:
    """``<location_id>.<sku>``, or None for a key that is not two valid ids."""
    location_id, dot, sku = key.partition(".")
    return (location_id, sku) if dot and _ID.match(location_id) and _ID.match(sku) else None


# -- message ids: each names the location where it names an event, since an event is both (rule 10) ----------


def availability_msg_id(location_id: str, sku: str, version: int) -> str:
    return f"availability:{location_id}:{sku}:{version}"


def reservation_msg_id(location_id: str, event_id: str, outcome: str) -> str:
    return f"reservation:{location_id}:{event_id}:{outcome}"


def alert_msg_id(location_id: str, event_id: str, sku: str, kind: str, on_hand: int) -> str:
    return f"alert:{location_id}:{event_id}:{sku}:{kind}:{on_hand}"


def outcome_msg_id(location_id: str, event_id: str, outcome: str) -> str:
    return f"outcome:{location_id}:{event_id}:{outcome}"


def channel_msg_id(channel_id: str, sku: str, version: int) -> str:
    return f"channel:{channel_id}:{sku}:{version}"


def channel_refresh_msg_id(channel_id: str, version: int) -> str:
    return f"channel-refresh:{channel_id}:{version}"


def order_msg_id(order_id: str, status: str) -> str:
    return f"order:{order_id}:{status}"


def dlq_msg_id(stream_sequence: int) -> str:
    return f"dlq:{stream_sequence}"


def header_event_id(headers: dict[str, str] | None) -> str | None:
    """The ``Nats-Msg-Id`` of an inbound message: its event_id where a publisher sent one (it is optional)."""
    return (headers or {}).get(MSG_ID) or None


# -- who may use which subjects ---------------------------------------------------------------------------------

_JS = "$JS.API"


class NatsPermissions(msgspec.Struct, frozen=True, kw_only=True):
    """Allow lists of subjects; whatever is not listed is refused by the server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def nats_permissions(
    role: str, locations: Iterable[str], *, key_id: str, pickup_locations: Iterable[str] = ()
) -> NatsPermissions:
    """The subjects a connection of this key may use. ``pickup_locations`` are read at connect time: NATS
    cannot look a location up per message, so an ecommerce key gets the pickup stores of that moment."""
    if role == "admin":
        return NatsPermissions(publish=(">",), subscribe=(">",))
    types, where = EVENT_GRANTS[role]
    places = sorted(set(pickup_locations if where == "pickup" else locations))
    publish = [inbound_subject(location, kind) for location in places for kind in sorted(types)]
    subscribe = [inbox_prefix(key_id) + ".>"]
    subscribe += [outcome_subject(location) for location in places]
    publish += [f"{_JS}.STREAM.INFO.{OUT_STREAM}"]
    # a consumer only on its own outcomes: the server checks that the filter in the subject is the config's
    publish += [f"{_JS}.CONSUMER.CREATE.{OUT_STREAM}.*.{outcome_subject(loc)}" for loc in places]
    publish += [f"{_JS}.CONSUMER.{verb}.{OUT_STREAM}.*" for verb in ("INFO", "MSG.NEXT")]
    if where == "own":
        subscribe += [alert_subject(location) for location in places]
        subscribe += [availability_subject(location, ">") for location in places]
    else:  # the web shop reads every store's and channel's availability (also from the buckets), every
        # reservation and order, and places orders on every channel
        subscribe += [AVAILABILITY_ALL, reservation_subject(">"), CHANNEL_ALL, order_subject(">")]
        publish += [order_inbound_subject("*", action) for action in ORDER_ACTIONS]
        publish += [f"{_JS}.CONSUMER.CREATE.{OUT_STREAM}.*.{order_subject('*')}"]
        publish += [*_reads(AVAILABILITY_KV_STREAM), *_reads(CHANNEL_KV_STREAM)]
    return NatsPermissions(publish=tuple(publish), subscribe=tuple(subscribe))


def _reads(stream: str) -> list[str]:
    """What reading a KV bucket's stream takes: its info, a key's entry, and a watch (an ordered consumer)."""
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.STREAM.MSG.GET.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.INFO.{stream}.*",
        f"{_JS}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


# -- the dead letter ----------------------------------------------------------------------------------------------


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """``stocksync.dlq.<location_id or _>``: the original message and why it was refused.

    ``body`` is a copy, cut (``body_truncated``) when the whole would not fit the DLQ's message limit;
    ``body_bytes`` is the original's size and ``stream_sequence`` finds it in ``STOCKSYNC_IN``.
    """

    subject: str
    headers: dict[str, str]
    body: str
    body_encoding: str  # "utf-8", or "base64" when the body is not UTF-8
    error: str
    detail: str
    stream_sequence: int | None
    dead_lettered_at: datetime
    body_bytes: int | None = None  # None in letters written before it was recorded
    body_truncated: bool = False
    headers_truncated: bool = False  # some headers left out, or a name or value cut
