"""What a client needs of NATS (spec section 3): stream and bucket names, the subjects it publishes and
reads, the connection options of an API key, and an event's body. No I/O.

The server's `stocksync.wire` builds on this module (parsing, message ids, permissions, the dead letter).
"""

from __future__ import annotations

from stocksync_contract.events import MAX_BODY_BYTES, InboundEvent, decode_inbound, encode

IN_STREAM = "STOCKSYNC_IN"
OUT_STREAM = "STOCKSYNC_OUT"
DLQ_STREAM = "STOCKSYNC_DLQ"
AVAILABILITY_BUCKET = "stocksync_availability"
CHANNEL_BUCKET = "stocksync_channel_availability"
MSG_ID = "Nats-Msg-Id"
ORDER_TOKEN = "_order"  # stocksync.in._order.<channel_id>.<action>: no location id starts with "_"
ORDER_ACTIONS = ("place", "ship", "cancel")


def inbound_subject(location_id: str, event_type: str) -> str:
    return f"stocksync.in.{location_id}.{event_type}"


def event_subject(event: InboundEvent) -> str:
    return inbound_subject(event.location_id, event.type)


def availability_subject(location_id: str, sku: str) -> str:
    return f"stocksync.out.availability.{location_id}.{sku}"


def reservation_subject(reservation_id: str) -> str:
    return f"stocksync.out.reservation.{reservation_id}"


def alert_subject(location_id: str) -> str:
    return f"stocksync.out.alert.{location_id}"


def outcome_subject(location_id: str) -> str:
    return f"stocksync.out.outcome.{location_id}"


def channel_subject(channel_id: str, sku: str) -> str:
    return f"stocksync.out.channel.{channel_id}.{sku}"


def order_subject(order_id: str) -> str:
    return f"stocksync.out.order.{order_id}"


def order_inbound_subject(channel_id: str, action: str) -> str:
    return f"stocksync.in.{ORDER_TOKEN}.{channel_id}.{action}"


def availability_key(location_id: str, sku: str) -> str:
    return f"{location_id}.{sku}"


def channel_key(channel_id: str, sku: str) -> str:
    return f"{channel_id}.{sku}"


def event_body(event: InboundEvent) -> bytes:
    """The JSON body, refused here if the worker would dead-letter it: such an event never gets an outcome."""
    body = encode(event)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"the event is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    decode_inbound(body)  # raises msgspec.ValidationError naming the field
    return body


def inbox_prefix(key_id: str) -> str:
    """The inbox a key's connections must use (nats-py: ``connect(inbox_prefix=...)``) to get any reply."""
    return f"_INBOX_{key_id}"


def key_options(api_key: str | None) -> dict[str, str]:
    """nats-py ``connect`` options of a client that connects with its API key: the key as the token, and
    the key's own inbox (the only one its connection may read replies on)."""
    if not api_key:
        return {}
    key_id = api_key.split("_")[1] if api_key.count("_") >= 2 else ""
    return {"token": api_key, "inbox_prefix": inbox_prefix(key_id)} if key_id else {"token": api_key}
