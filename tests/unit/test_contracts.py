"""contracts/ is what the code generates (drift check), coherent, and true of the bodies the code takes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from stocksync import contracts
from stocksync.domain import events

ROOT = Path(__file__).resolve().parents[2] / "contracts"

# Spec section 3, verbatim.
SPEC_SALE = """{"event_id": "store-001:till-3:000123", "type": "sale", "location_id": "store-001",
 "occurred_at": "2026-11-23T10:15:00Z", "source": "pos:store-001:till-3", "reference": "receipt-98765",
 "lines": [{"sku": "SKU-123", "qty": 2}]}"""


def load(path: str) -> Any:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


def test_checked_in_contracts_are_what_the_code_generates() -> None:
    problems = contracts.drift(contracts.render(), ROOT)
    assert not problems, "contracts/ has drifted from the code: run scripts/contracts\n" + "\n".join(problems)


class _ChangedSale(events.Event, frozen=True, kw_only=True, tag="sale"):
    """A sale that grew a field: what an edit to events.Sale would look like to the generator."""

    lines: Annotated[list[events.QtyLine], msgspec.Meta(min_length=1)]
    till: str


def _with_sale(kind: Any) -> list[contracts.Message]:
    return [msgspec.structs.replace(m, type=kind) if m.name == "sale" else m for m in contracts.MESSAGES]


def test_the_drift_check_reports_a_changed_struct() -> None:
    assert contracts.drift(contracts.render(_with_sale(_ChangedSale)), ROOT) == [
        "asyncapi.json: out of date",
        "schemas/sale.json: out of date",
    ]


def test_the_drift_check_reports_missing_and_stale_files_and_write_fixes_them(tmp_path: Path) -> None:
    files = contracts.render()
    assert set(contracts.drift(files, tmp_path)) == {f"{path}: missing" for path in files}
    contracts.write(files, tmp_path)
    assert contracts.drift(files, tmp_path) == []

    (tmp_path / "schemas" / "retired.json").write_text("{}\n")
    fewer = contracts.render([m for m in contracts.MESSAGES if m.name != "cancel"])
    assert "schemas/retired.json: no longer generated" in contracts.drift(fewer, tmp_path)
    contracts.write(fewer, tmp_path)
    assert not (tmp_path / "schemas" / "cancel.json").exists()
    assert contracts.drift(fewer, tmp_path) == []


def test_output_is_deterministic() -> None:
    first, second = contracts.render(), contracts.render()
    assert first == second
    assert all(text.endswith("}\n") for text in first.values())


def test_every_inbound_type_and_outbound_message_has_a_schema_file() -> None:
    names = {path.stem for path in (ROOT / "schemas").glob("*.json")}
    assert {
        *events.INBOUND_TYPES,
        "inbound_event",
        "availability",
        "reservation",
        "alert",
        "outcome",
        "dead_letter",
    } <= names


# -- AsyncAPI ------------------------------------------------------------------------------------------------


def resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for token in ref[2:].split("/"):
        assert isinstance(node, dict) and token in node, f"{ref} does not resolve"
        node = node[token]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return load(contracts.ASYNCAPI_FILE)


def test_asyncapi_is_3_0_and_every_reference_resolves(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    for ref in refs(asyncapi):
        resolve(asyncapi, ref)


def test_every_channel_carries_messages_whose_payload_is_a_schema(asyncapi: dict[str, Any]) -> None:
    schemas = asyncapi["components"]["schemas"]
    for key, channel in asyncapi["channels"].items():
        assert channel["messages"], key
        for message_ref in channel["messages"].values():
            message = resolve(asyncapi, message_ref["$ref"])
            payload = resolve(asyncapi, message["payload"]["$ref"])
            assert payload in schemas.values()
            assert message["headers"]["properties"]["Nats-Msg-Id"]["description"]
        placeholders = re.findall(r"\{(\w+)\}", channel["address"])
        assert sorted(placeholders) == sorted(channel.get("parameters", {})), key


def test_operations_receive_inbound_and_send_outbound(asyncapi: dict[str, Any]) -> None:
    addresses: dict[str, str] = {}
    for key, operation in asyncapi["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        channel = resolve(asyncapi, channel_ref)
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), key
            resolve(asyncapi, message["$ref"])
        inbound = channel["address"].startswith("stocksync.in.")
        assert operation["action"] == ("receive" if inbound else "send"), key
        addresses[channel["address"]] = operation["action"]
    assert {f"stocksync.in.{{location_id}}.{tag}" for tag in events.INBOUND_TYPES} <= set(addresses)
    assert {
        "stocksync.out.availability.{location_id}.{sku}",
        "stocksync.out.reservation.{reservation_id}",
        "stocksync.out.alert.{location_id}",
        "stocksync.out.outcome.{location_id}",
        "stocksync.dlq.{location_id}",
    } <= set(addresses)
    assert "stocksync_availability" in asyncapi["info"]["description"]


# -- the schemas describe the bodies that the Structs accept -----------------------------------------------

ANNOTATIONS = {"$schema", "$comment", "$defs", "title", "description", "default", "format", "discriminator"}


def validate(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "$") -> list[str]:
    """A tiny JSON Schema validator for the keywords msgspec emits; an unknown keyword fails loudly."""
    unknown = set(schema) - ANNOTATIONS - set(_CHECKS) - {"required"}  # "properties" checks "required"
    assert not unknown, f"the test validator does not know {unknown} (at {at})"
    return [
        error
        for keyword, check in _CHECKS.items()
        if keyword in schema
        for error in check(schema, value, root, at)
    ]


def _type(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str) -> list[str]:
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "integer": int,
        "number": (int, float),
    }
    wanted = kinds[schema["type"]]
    numeric = schema["type"] in ("integer", "number")
    ok = isinstance(value, wanted) and not (numeric and isinstance(value, bool))
    return [] if ok else [f"{at}: not {schema['type']}"]


def _properties(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    errors = [f"{at}: missing {name}" for name in schema.get("required", []) if name not in value]
    return errors + [
        e
        for name, sub in schema.get("properties", {}).items()
        if name in value
        for e in validate(sub, value[name], root, f"{at}.{name}")
    ]


def _items(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str) -> list[str]:
    return (
        [e for i, item in enumerate(value) for e in validate(schema["items"], item, root, f"{at}[{i}]")]
        if isinstance(value, list)
        else []
    )


def _bound(keyword: str, applies_to: Any, holds: Any) -> Any:
    """A keyword that constrains only values of one kind (any other kind is for "type" to report)."""

    def check(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str) -> list[str]:
        if not isinstance(value, applies_to) or isinstance(value, bool) or holds(value, schema[keyword]):
            return []
        return [f"{at}: fails {keyword}={schema[keyword]}"]

    return check


_CHECKS: dict[str, Any] = {
    "$ref": lambda s, v, r, at: validate(resolve(r, s["$ref"]), v, r, at),
    "anyOf": lambda s, v, r, at: (
        [] if any(not validate(sub, v, r, at) for sub in s["anyOf"]) else [f"{at}: matches none of anyOf"]
    ),
    "enum": lambda s, v, r, at: [] if v in s["enum"] else [f"{at}: not one of {s['enum']}"],
    "type": _type,
    "properties": _properties,
    "items": _items,
    "pattern": _bound("pattern", str, lambda v, p: re.search(p, v) is not None),
    "minimum": _bound("minimum", (int, float), lambda v, n: v >= n),
    "maximum": _bound("maximum", (int, float), lambda v, n: v <= n),
    "minLength": _bound("minLength", str, lambda v, n: len(v) >= n),
    "maxLength": _bound("maxLength", str, lambda v, n: len(v) <= n),
    "minItems": _bound("minItems", list, lambda v, n: len(v) >= n),
    "maxItems": _bound("maxItems", list, lambda v, n: len(v) <= n),
}


def check(name: str, body: Any) -> list[str]:
    schema = load(f"schemas/{name}.json")
    return validate(schema, body, schema)


def test_the_spec_sale_example_is_valid_for_the_struct_and_the_schema() -> None:
    body = json.loads(SPEC_SALE)
    assert isinstance(msgspec.json.decode(SPEC_SALE, type=events.Sale), events.Sale)
    assert check("sale", body) == []
    assert check("inbound_event", body) == []
    assert contracts.EXAMPLES["sale"] == body  # the AsyncAPI document shows the spec's example


@pytest.mark.parametrize("name", events.INBOUND_TYPES)
def test_every_example_is_valid_for_the_struct_and_both_schemas(name: str, asyncapi: dict[str, Any]) -> None:
    example = contracts.EXAMPLES[name]
    assert type(events.decode_inbound(json.dumps(example))) is contracts.INBOUND[name]
    assert check(name, example) == []
    assert check("inbound_event", example) == []
    assert asyncapi["components"]["messages"][name]["examples"][0]["payload"] == example


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines": [{"sku": "SKU-123", "qty": 0}]}, "qty"),
        ({"lines": [{"sku": "bad sku", "qty": 1}]}, "sku"),
        ({"lines": []}, "lines"),
        ({"event_id": ""}, "event_id"),
        ({"location_id": None}, "location_id"),
        ({"type": "sales"}, "type"),
        ({"lines": [{"sku": "SKU-123", "qty": True}]}, "qty"),
    ],
)
def test_what_the_struct_refuses_the_schema_refuses(change: dict[str, Any], field: str) -> None:
    body = {**json.loads(SPEC_SALE), **change}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(body), type=events.Sale)
    errors = check("sale", body)
    assert any(field in error for error in errors), errors
    assert check("inbound_event", body)


def test_a_missing_field_is_refused_by_the_schema() -> None:
    body = json.loads(SPEC_SALE)
    del body["lines"]
    assert check("sale", body) == ["$: missing lines"]


# -- OpenAPI: the error answers ------------------------------------------------------------------------------

ERROR_SCHEMAS = {"#/components/schemas/ErrorBody", "#/components/schemas/ShortageError"}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return load(contracts.OPENAPI_FILE)


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in openapi["paths"].items() for method, op in ops.items()]


def test_every_error_answer_is_documented_with_the_real_error_body(openapi: dict[str, Any]) -> None:
    """Not Litestar's default ``{"status_code", "detail", "extra"}``, and 401 and 503 on every /v1 route."""
    for method, path, operation in operations(openapi):
        responses = operation["responses"]
        if path.startswith("/v1/"):
            assert {"401", "503"} <= set(responses), (method, path)
        for status, response in responses.items():
            if int(status) < 400:
                continue
            named = set(refs(response["content"]["application/json"]["schema"]))
            if path.startswith("/health/"):
                assert named == {"#/components/schemas/Health"}, (method, path, status)
            else:
                assert named and named <= ERROR_SCHEMAS, (method, path, status)
                assert "#/components/schemas/ShortageError" not in named or status == "409"
    assert "status_code" not in json.dumps(openapi)


def test_the_error_body_schemas_cannot_both_match_one_answer(openapi: dict[str, Any]) -> None:
    """The 409 of a reservation is ``oneOf`` the two bodies, so their codes must not overlap."""
    schemas = openapi["components"]["schemas"]
    assert schemas["ShortageError"]["properties"]["error"]["const"] == "insufficient_stock"
    assert "insufficient_stock" not in schemas["ErrorBody"]["properties"]["error"]["enum"]
    assert "shortages" in schemas["ShortageError"]["required"]


def _answered_codes() -> dict[str, int]:
    """Every code the HTTP error mapping can answer, with its status: each kind in domain/errors.py, and what
    Litestar raises itself (a body too large, a method a route does not take, any other failure)."""
    from litestar.exceptions import HTTPException, MethodNotAllowedException, ValidationException

    from stocksync.domain import errors as domain
    from stocksync.http import errors as http

    kinds = [
        kind
        for kind in vars(domain).values()
        if isinstance(kind, type)
        and issubclass(kind, domain.StocksyncError)
        and kind is not domain.StocksyncError
        and "code" in vars(kind)
    ]
    raised = [kind("x") for kind in kinds]
    raised += [HTTPException(status_code=413), MethodNotAllowedException(), ValidationException()]
    raised.append(RuntimeError("a defect"))
    return {body["error"]: status for status, body in map(http.answer, raised)}


def _documented_codes() -> dict[str, int]:
    text = (ROOT.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| (.+?) \|$", text, re.MULTILINE)
    assert all(meaning.strip() for _, _, meaning in rows)
    return {code: int(status) for code, status, _ in rows}


def test_docs_errors_lists_every_code_with_the_status_it_answers() -> None:
    assert _documented_codes() == _answered_codes()


def test_the_openapi_error_codes_are_those_the_operations_can_answer(openapi: dict[str, Any]) -> None:
    """All but the two no operation documents: 405 (a route, not an operation) and 500 (a defect)."""
    schemas = openapi["components"]["schemas"]
    codes = {*schemas["ErrorBody"]["properties"]["error"]["enum"]}
    codes.add(schemas["ShortageError"]["properties"]["error"]["const"])
    assert codes == set(_answered_codes()) - {"method_not_allowed", "internal"}


def test_a_new_v1_route_gets_the_shared_error_answers_without_declaring_them() -> None:
    """`document_errors` in app assembly, not each route: a route added later (a colleague's) is documented
    with the real error body, 401 and 503, 400 when it takes input, 413 when it reads a body."""
    from litestar import Litestar, Router, get, post
    from litestar.params import FromQuery

    from stocksync.http.errors import document_errors
    from stocksync.http.schemas import ErrorBody, body_operation

    @get("/plain", sync_to_thread=False)
    def plain() -> dict[str, str]:
        return {}

    @get("/query", sync_to_thread=False)
    def query(sku: FromQuery[str]) -> dict[str, str]:
        return {"sku": sku}

    @post("/body", operation_class=body_operation(ErrorBody), sync_to_thread=False)
    def body() -> dict[str, str]:
        return {}

    app = Litestar(route_handlers=[Router("/v1", route_handlers=[plain, query, body]), plain])
    document_errors(app)
    paths = app.openapi_schema.to_schema()["paths"]

    def errors(path: str, method: str) -> dict[str, set[str]]:
        responses = paths[path][method]["responses"]
        return {s: set(refs(r)) for s, r in responses.items() if int(s) >= 400}

    body_ref = {"#/components/schemas/ErrorBody"}
    assert errors("/v1/plain", "get") == {"401": body_ref, "503": body_ref}
    assert errors("/v1/query", "get") == {"400": body_ref, "401": body_ref, "503": body_ref}
    assert set(errors("/v1/body", "post")) == {"400", "401", "413", "503"}
    assert errors("/plain", "get") == {}  # outside /v1: no key, no shared answers
    assert "status_code" not in json.dumps(paths)
