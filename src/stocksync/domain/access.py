"""Who may do what, over HTTP and NATS alike: one table of event rights per role (spec section 3, "Access to
NATS"); `wire.nats_permissions` turns it into the subjects a NATS connection of a key may use.

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

from stocksync.domain.events import INBOUND_TYPES

# role -> (event types it may apply, where: "own" locations or "pickup"-enabled ones); admin may do anything.
EVENT_GRANTS: dict[str, tuple[frozenset[str], str]] = {
    "ecommerce": (frozenset({"reserve", "collect", "cancel"}), "pickup"),
    "staff": (frozenset(INBOUND_TYPES), "own"),
    "pos": (frozenset({"sale", "return"}), "own"),
}
