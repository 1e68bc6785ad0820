"""Generates ``contracts/`` (JSON Schema per message, AsyncAPI for NATS, OpenAPI for HTTP) from the code.

The files are checked in so that consumers can read them without running stocksync; they are generated
rather than written so that they cannot drift from the Structs that actually validate and encode messages.
``python -m stocksync.contracts --write`` (``scripts/contracts``) rewrites them; without ``--write`` it only
compares and exits 1 on drift, as tests/unit/test_contracts.py does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from stocksync import __version__, wire
from stocksync.adapters.database import create_engine
from stocksync.domain import events
from stocksync.messages import (
    AlertMessage,
    AvailabilityMessage,
    ChannelAvailabilityMessage,
    OrderBody,
    OutcomeMessage,
    PositionBody,
    ReservationBody,
    ReservationMessage,
)
from stocksync.messaging import topology

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = "schemas"
ASYNCAPI_FILE = "asyncapi.json"
OPENAPI_FILE = "openapi.json"
GENERATED_BY = "generated from the code by scripts/contracts; do not edit"

EVENT_MSG_ID = (
    "optional, and best left out; if sent, the event_id. The ledger drops repeats for ever by (location_id, "
    "event_id); the stream de-duplicates by this header across every store for 100 ms, so a publisher that "
    "sends it can have its message dropped by another store publishing the same id just before"
)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One contract: a schema file and, when it has an ``address``, an AsyncAPI channel and operation."""

    name: str  # file stem, AsyncAPI message key
    type: Any  # what msgspec validates or encodes the body with
    summary: str
    address: str | None = None  # NATS subject, parameters in braces
    action: Literal["receive", "send"] = "send"  # from the service's point of view
    msg_id: str | None = None  # what the Nats-Msg-Id header carries
    msg_id_always: bool = True  # whether every message carries it


INBOUND_SUMMARIES = {
    "sale": "A sale: a fact, always applied, even below zero (rule 4).",
    "return": "A return: to on_hand when restocked (default), to damaged when damaged (rule 8).",
    "receipt": "Goods received: added to on_hand (rule 9).",
    "adjust": "A signed correction of on_hand with a reason (rule 9).",
    "count": "A stock count: sets on_hand to the counted quantity as of occurred_at (rule 9).",
    "reserve": "A click-and-collect hold: held whole, or rejected with its shortages (rule 5).",
    "collect": "A held reservation collected: it becomes a sale (rule 6).",
    "cancel": "A held reservation cancelled: its quantities are released (rule 6).",
}

INBOUND: dict[str, type] = {cls.__struct_config__.tag: cls for cls in typing.get_args(events.InboundEvent)}

MESSAGES: list[Message] = [
    *(
        Message(
            name=tag,
            type=cls,
            summary=INBOUND_SUMMARIES[tag],
            action="receive",
            msg_id=EVENT_MSG_ID,
            msg_id_always=False,
            address=wire.inbound_subject("{location_id}", tag),
        )
        for tag, cls in INBOUND.items()
    ),
    Message(
        name="inbound_event",
        type=events.InboundEvent,
        summary="Any inbound event, told apart by `type`: the body of `POST /v1/events`.",
    ),
    Message(
        name="availability",
        type=AvailabilityMessage,
        address=wire.availability_subject("{location_id}", "{sku}"),
        summary="The position after a committed change; consumers drop a `version` older than theirs.",
        msg_id=wire.availability_msg_id("<location_id>", "<sku>", "<version>"),
    ),
    Message(
        name="reservation",
        type=ReservationMessage,
        address=wire.reservation_subject("{reservation_id}"),
        summary="A reservation held, rejected (with shortages), collected, cancelled or expired.",
        msg_id=wire.reservation_msg_id("<location_id>", "<event_id>", "<outcome>"),
    ),
    Message(
        name="alert",
        type=AlertMessage,
        address=wire.alert_subject("{location_id}"),
        summary="`negative_stock`, or `reservation_at_risk` naming the reservations no longer covered.",
        msg_id=wire.alert_msg_id("<location_id>", "<event_id>", "<sku>", "<kind>", "<on_hand>"),
    ),
    Message(
        name="outcome",
        type=OutcomeMessage,
        address=wire.outcome_subject("{location_id}"),
        summary="What became of every recorded event: applied, duplicate or rejected (with its error).",
        msg_id=wire.outcome_msg_id("<location_id>", "<event_id>", "<outcome>"),
    ),
    *(
        Message(
            name=f"order_{action}",
            type=events.OrderRequest if action == "place" else events.OrderAction,
            summary=summary,
            action="receive",
            address=wire.order_inbound_subject("{channel_id}", action),
            msg_id="not used: an order is placed once by its order_id",
            msg_id_always=False,
        )
        for action, summary in (
            ("place", "An online order: allocated whole or refused with channel shortages (section 7)."),
            ("ship", "Ship an allocated order: every allocation collected, a sale at its location."),
            ("cancel", "Cancel an allocated order: every allocation released."),
        )
    ),
    Message(
        name="channel_availability",
        type=ChannelAvailabilityMessage,
        address=wire.channel_subject("{channel_id}", "{sku}"),
        summary="What a channel may sell of a sku, published no later than the positions it sums.",
        msg_id=wire.channel_msg_id("<channel_id>", "<sku>", "<version>"),
    ),
    Message(
        name="order",
        type=OrderBody,
        address=wire.order_subject("{order_id}"),
        summary="An order allocated, refused (with `error`), shipped or cancelled.",
        msg_id=wire.order_msg_id("<order_id>", "<status>"),
    ),
    Message(
        name="dead_letter",
        type=wire.DeadLetter,
        address=wire.dlq_subject("{location_id}"),
        summary="A message that could not be decoded or validated: kept here, acknowledged inbound.",
        msg_id=f"{wire.dlq_msg_id('<inbound stream sequence>')}, when the refused message came from the stream",
        msg_id_always=False,
    ),
]

PARAMETERS = {
    "channel_id": {
        "description": f"channel id, `{events.ID_PATTERN}`",
        "examples": ["web"],
        "location": "$message.payload#/channel_id",
    },
    "order_id": {
        "description": "order id (a single subject token)",
        "examples": ["web-100231"],
        "location": "$message.payload#/order_id",
    },
    "location_id": {
        "description": f"location id, `{events.ID_PATTERN}`",
        "examples": ["store-001"],
        "location": "$message.payload#/location_id",
    },
    "sku": {
        "description": f"sku id, `{events.ID_PATTERN}`",
        "examples": ["SKU-123"],
        "location": "$message.payload#/sku",
    },
    "reservation_id": {
        "description": "reservation id (a single subject token)",
        "examples": ["res-4411"],
        "location": "$message.payload#/reservation_id",
    },
    "dlq_location_id": {
        "examples": ["store-001", "_"],
        "description": "the refused subject's location token, or `_` without a valid one",
    },
}

# The spec's example (section 3) and one of each other type, shown in AsyncAPI and validated by the tests.
_EVENT = {"location_id": "store-001", "occurred_at": "2026-11-23T10:15:00Z"}
EXAMPLES: dict[str, dict[str, Any]] = {
    "sale": {
        "event_id": "store-001:till-3:000123",
        "type": "sale",
        "location_id": "store-001",
        "occurred_at": "2026-11-23T10:15:00Z",
        "source": "pos:store-001:till-3",
        "reference": "receipt-98765",
        "lines": [{"sku": "SKU-123", "qty": 2}],
    },
    "return": {
        **_EVENT,
        "event_id": "store-001:till-3:000124",
        "type": "return",
        "source": "pos:store-001:till-3",
        "reference": "receipt-98765",
        "lines": [{"sku": "SKU-123", "qty": 1, "disposition": "damaged"}],
    },
    "receipt": {
        **_EVENT,
        "event_id": "wms:asn-5521",
        "type": "receipt",
        "source": "wms",
        "reference": "asn-5521",
        "lines": [{"sku": "SKU-123", "qty": 24}],
    },
    "adjust": {
        **_EVENT,
        "event_id": "staff:store-001:adj-77",
        "type": "adjust",
        "source": "staff:anna",
        "lines": [{"sku": "SKU-123", "delta": -1, "reason": "shrinkage"}],
    },
    "count": {
        **_EVENT,
        "event_id": "staff:store-001:count-12",
        "type": "count",
        "source": "staff:anna",
        "lines": [{"sku": "SKU-123", "counted": 17}],
    },
    "reserve": {
        **_EVENT,
        "event_id": "web:res-4411:reserve",
        "type": "reserve",
        "source": "web",
        "reference": "order-5512",
        "reservation_id": "res-4411",
        "channel": "ecommerce",
        "ttl_seconds": 7200,
        "lines": [{"sku": "SKU-123", "qty": 1}],
    },
    "collect": {
        **_EVENT,
        "event_id": "web:res-4411:collect",
        "type": "collect",
        "source": "staff:anna",
        "reservation_id": "res-4411",
    },
    "cancel": {
        **_EVENT,
        "event_id": "web:res-4411:cancel",
        "type": "cancel",
        "source": "web",
        "reservation_id": "res-4411",
    },
}


def dumps(document: Any) -> str:
    """Sorted keys, two-space indent, trailing newline: byte-stable output for the drift check."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def message_schema(message: Message) -> dict[str, Any]:
    """A standalone JSON Schema: the body's own definition plus everything it refers to, in ``$defs``."""
    header = {"$schema": JSON_SCHEMA_DIALECT, "$comment": GENERATED_BY, "description": message.summary}
    return {**header, **msgspec.json.schema(message.type)}


def _asyncapi_schema(node: Any) -> Any:
    """AsyncAPI schemas take ``discriminator`` as the property name, not OpenAPI's object."""
    if isinstance(node, dict):
        return {
            key: value["propertyName"]
            if key == "discriminator" and isinstance(value, dict)
            else _asyncapi_schema(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def _pascal(*words: str) -> str:
    return "".join(part.title() for part in "_".join(words).split("_"))


def _camel(*words: str) -> str:
    name = _pascal(*words)
    return name[0].lower() + name[1:]


def _headers(message: Message) -> dict[str, Any]:
    msg_id = {"type": "string", "description": message.msg_id}
    headers = {"type": "object", "properties": {wire.MSG_ID: msg_id}}
    return {**headers, "required": [wire.MSG_ID]} if message.msg_id_always else headers


def _description() -> str:
    streams = "\n".join(
        f"- `{s.name}` (`{', '.join(s.subjects)}`): {s.description}" for s in topology.streams()
    )
    return (
        "The NATS (JetStream) side of stocksync, spec section 3. Inbound events are published by tills, the "
        "web shop and staff tools to `stocksync.in.<location_id>.<type>`, best without `Nats-Msg-Id` (see "
        "the header's description); the subject's location and type must equal the body's. Everything the service publishes goes "
        "through a transactional outbox: published if and only if its change committed, at least once, in "
        "commit order per position, with `Nats-Msg-Id` set so that repeats are dropped.\n\n"
        f"Streams:\n{streams}\n\n"
        f"Key-value bucket `{wire.AVAILABILITY_BUCKET}`: key `<location_id>.<sku>`, value the "
        "availability message (schema `AvailabilityMessage`), the current availability of every position. "
        "It is written by compare-and-set, never replacing a newer `version` with an older; watch it with a "
        "KV watcher or on channel `availabilityBucket`."
    )


def asyncapi(messages: Sequence[Message] = MESSAGES) -> dict[str, Any]:
    """AsyncAPI 3.0: one channel and one operation per addressed message, payloads by ``$ref``."""
    payloads, schemas = msgspec.json.schema_components(
        [m.type for m in messages], ref_template="#/components/schemas/{name}"
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    components_messages: dict[str, Any] = {}
    for message, payload in zip(messages, payloads, strict=True):
        if "$ref" not in payload:  # a union has no name of its own: name it after the message
            schemas[_pascal(message.name)] = payload
            payload = {"$ref": f"#/components/schemas/{_pascal(message.name)}"}
        if message.address is None:
            continue
        key = _camel("in", message.name) if message.action == "receive" else _camel(message.name)
        body: dict[str, Any] = {
            "name": message.name,
            "title": message.name.replace("_", " "),
            "summary": message.summary,
            "contentType": "application/json",
            "payload": payload,
            "headers": _headers(message),
        }
        if message.name in EXAMPLES:
            example = EXAMPLES[message.name]
            body["examples"] = [
                {
                    "name": f"{message.name}-example",
                    "payload": example,
                }
            ]
        components_messages[message.name] = body
        parameters = {
            name: {"$ref": f"#/components/parameters/{_parameter(message, name)}"}
            for name in _placeholders(message.address)
        }
        channels[key] = {
            "address": message.address,
            "title": message.name.replace("_", " "),
            "messages": {message.name: {"$ref": f"#/components/messages/{message.name}"}},
            **({"parameters": parameters} if parameters else {}),
        }
        operations[_camel(message.action, message.name)] = {
            "action": message.action,
            "summary": message.summary,
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{message.name}"}],
        }
    channels["availabilityBucket"] = {
        "address": wire.AVAILABILITY_KV_SUBJECT + wire.availability_key("{location_id}", "{sku}"),
        "title": "availability bucket",
        "description": "The KV bucket's own subjects: one retained entry per position, sourced from "
        "STOCKSYNC_OUT's stocksync.out.availability.{location_id}.{sku} (each entry the out stream's message).",
        "messages": {"availability": {"$ref": "#/components/messages/availability"}},
        "parameters": {name: {"$ref": f"#/components/parameters/{name}"} for name in ("location_id", "sku")},
    }
    operations["putAvailability"] = {
        "action": "send",
        "summary": "The current availability of a position, kept in the bucket (taken from the out stream).",
        "channel": {"$ref": "#/channels/availabilityBucket"},
        "messages": [{"$ref": "#/channels/availabilityBucket/messages/availability"}],
    }
    channels["channelAvailabilityBucket"] = {
        "address": wire.CHANNEL_KV_SUBJECT + wire.channel_key("{channel_id}", "{sku}"),
        "title": "channel availability bucket",
        "description": "The KV bucket's own subjects: one retained entry per channel and sku, sourced from "
        "STOCKSYNC_OUT's stocksync.out.channel.{channel_id}.{sku}.",
        "messages": {"channel_availability": {"$ref": "#/components/messages/channel_availability"}},
        "parameters": {name: {"$ref": f"#/components/parameters/{name}"} for name in ("channel_id", "sku")},
    }
    operations["putChannelAvailability"] = {
        "action": "send",
        "summary": "What a channel may sell of a sku now, kept in the channel bucket (from the out stream).",
        "channel": {"$ref": "#/channels/channelAvailabilityBucket"},
        "messages": [{"$ref": "#/channels/channelAvailabilityBucket/messages/channel_availability"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "stocksync NATS", "version": __version__, "description": _description()},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _asyncapi_schema(schemas),
            "messages": components_messages,
            "parameters": PARAMETERS,
        },
    }


def _placeholders(address: str) -> list[str]:
    return [token[1:-1] for token in address.split(".") if token.startswith("{")]


def _parameter(message: Message, name: str) -> str:
    return "dlq_location_id" if message.name == "dead_letter" and name == "location_id" else name


def _http_module(name: str) -> Any | None:
    """``stocksync.http.<name>``, or None while the HTTP package does not have it yet."""
    try:
        return importlib.import_module(f"stocksync.http.{name}")
    except ModuleNotFoundError as error:
        if error.name in ("stocksync.http", f"stocksync.http.{name}"):
            return None
        raise


def http_messages() -> list[Message]:
    """The HTTP bodies, ``http_``-prefixed: every Struct defined in ``stocksync.http.schemas`` (so a new body
    appears by itself) and the position and reservation it shares with NATS."""
    module = _http_module("schemas")
    if module is None:
        return []
    structs = {
        _snake(obj.__name__): obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj.__module__ == module.__name__
    }
    structs |= {"position": PositionBody, "reservation": ReservationBody}
    return [
        Message(name=f"http_{name}", type=cls, summary=f"HTTP body `{cls.__name__}` (spec section 4).")
        for name, cls in sorted(structs.items())
    ]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def openapi() -> dict[str, Any] | None:
    """The HTTP API's OpenAPI from the Litestar app itself; None while ``stocksync.http.app`` is not there."""
    module = _http_module("app")
    if module is None:
        return None
    engine = create_engine("postgresql://contracts@127.0.0.1/contracts")  # an engine connects only when used
    return module.create_app(engine=engine, ledger=None).openapi_schema.to_schema()


def render(messages: Sequence[Message] = MESSAGES) -> dict[str, str]:
    """Every generated file, by path relative to ``contracts/``; ``messages`` are the NATS ones."""
    every = [*messages, *http_messages()]
    files = {f"{SCHEMA_DIR}/{m.name}.json": dumps(message_schema(m)) for m in every}
    files[ASYNCAPI_FILE] = dumps(asyncapi(messages))
    spec = openapi()
    if spec is not None:
        files[OPENAPI_FILE] = dumps(spec)
    return dict(sorted(files.items()))


def _on_disk(root: Path) -> dict[str, str]:
    paths = [*root.glob(f"{SCHEMA_DIR}/*.json"), root / ASYNCAPI_FILE, root / OPENAPI_FILE]
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in paths if p.is_file()}


def drift(expected: Mapping[str, str], root: Path) -> list[str]:
    """What differs between the generated files and those under ``root``: one line per file."""
    actual = _on_disk(root)
    problems = [f"{path}: missing" for path in expected if path not in actual]
    problems += [f"{path}: out of date" for path, text in expected.items() if actual.get(path, text) != text]
    problems += [f"{path}: no longer generated" for path in actual if path not in expected]
    return sorted(problems)


def write(files: Mapping[str, str], root: Path) -> list[str]:
    """Write what changed and delete what is no longer generated; returns the drift that was fixed."""
    problems = drift(files, root)
    for path in set(_on_disk(root)) - set(files):
        (root / path).unlink()
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stocksync.contracts", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the files (default: only check them)")
    parser.add_argument("--root", type=Path, default=Path("contracts"), help="default: ./contracts")
    args = parser.parse_args(argv)
    files = render()
    if OPENAPI_FILE not in files:
        print("note: stocksync.http.app is not there yet, so openapi.json was not generated", file=sys.stderr)
    if args.write:
        changed = write(files, args.root)
        print("\n  ".join([f"{args.root}/ updated:", *changed]) if changed else f"{args.root}/ is up to date")
        return 0
    problems = drift(files, args.root)
    if problems:
        print(
            "\n".join([*problems, f"{args.root}/ has drifted from the code: run scripts/contracts"]),
            file=sys.stderr,
        )
        return 1
    print(f"{args.root}/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
