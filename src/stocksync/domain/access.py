"""Who may do what, over HTTP and NATS alike: one table of event rights per role, and the NATS subjects a
connection of a key may publish and subscribe to (spec section 3, "Access to NATS").

| role | may apply | where |
| --- | --- | --- |
| admin | everything | everywhere |
| ecommerce | reserve, collect, cancel | pickup-enabled locations |
| staff | every event type | its own locations |
| pos | sale, return | its own locations |

Over NATS the rights are subjects: a key publishes ``stocksync.in.<location>.<type>`` for the types and
locations above, reads the outcomes and alerts of those locations, and gets JetStream replies on an inbox of
its own (``_INBOX_<key_id>``), so no key can read another connection's replies. Only the service and admin
keys publish ``stocksync.out.>`` and ``stocksync.dlq.>``, write the buckets and manage streams.
"""

from __future__ import annotations

from collections.abc import Iterable

from msgspec import Struct

from stocksync.domain.events import INBOUND_TYPES

IN_STREAM = "STOCKSYNC_IN"
OUT_STREAM = "STOCKSYNC_OUT"
DLQ_STREAM = "STOCKSYNC_DLQ"
AVAILABILITY_BUCKET = "stocksync_availability"

# role -> (event types it may apply, where: "own" locations or "pickup"-enabled ones); admin may do anything.
EVENT_GRANTS: dict[str, tuple[frozenset[str], str]] = {
    "ecommerce": (frozenset({"reserve", "collect", "cancel"}), "pickup"),
    "staff": (frozenset(INBOUND_TYPES), "own"),
    "pos": (frozenset({"sale", "return"}), "own"),
}

_JS = "$JS.API"
_KV_STREAM = f"KV_{AVAILABILITY_BUCKET}"


class NatsPermissions(Struct, frozen=True, kw_only=True):
    """Allow lists of subjects; whatever is not listed is refused by the server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(key_id: str) -> str:
    """The inbox a key's connections must use (nats-py: ``connect(inbox_prefix=...)``) to get any reply."""
    return f"_INBOX_{key_id}"


def nats_permissions(
    role: str, locations: Iterable[str], *, key_id: str, pickup_locations: Iterable[str] = ()
) -> NatsPermissions:
    """The subjects a connection of this key may use. ``pickup_locations`` are read at connect time: NATS
    cannot look a location up per message, so an ecommerce key gets the pickup stores of that moment."""
    if role == "admin":
        return NatsPermissions(publish=(">",), subscribe=(">",))
    types, where = EVENT_GRANTS[role]
    places = sorted(set(pickup_locations if where == "pickup" else locations))
    publish = [f"stocksync.in.{location}.{kind}" for location in places for kind in sorted(types)]
    subscribe = [inbox_prefix(key_id) + ".>"]
    subscribe += [f"stocksync.out.outcome.{location}" for location in places]
    publish += [f"{_JS}.STREAM.INFO.{OUT_STREAM}"]
    # a consumer only on its own outcomes: the server checks that the filter in the subject is the config's
    publish += [f"{_JS}.CONSUMER.CREATE.{OUT_STREAM}.*.stocksync.out.outcome.{loc}" for loc in places]
    publish += [f"{_JS}.CONSUMER.{verb}.{OUT_STREAM}.*" for verb in ("INFO", "MSG.NEXT")]
    if where == "own":
        subscribe += [f"stocksync.out.alert.{location}" for location in places]
        subscribe += [f"stocksync.out.availability.{location}.>" for location in places]
    else:  # the web shop reads every store's availability (also from the bucket) and every reservation
        subscribe += ["stocksync.out.availability.>", "stocksync.out.reservation.>"]
        publish += [
            f"{_JS}.STREAM.INFO.{_KV_STREAM}",
            f"{_JS}.STREAM.MSG.GET.{_KV_STREAM}",
            f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}",
            f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}.>",
            f"{_JS}.CONSUMER.INFO.{_KV_STREAM}.*",
            f"{_JS}.CONSUMER.DELETE.{_KV_STREAM}.*",
            f"$JS.FC.{_KV_STREAM}.>",
        ]
    return NatsPermissions(publish=tuple(publish), subscribe=tuple(subscribe))
