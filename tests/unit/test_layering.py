"""The layering rules of docs/design.md, read from the source's imports: a module that crosses one fails here.

Rules that do not hold everywhere yet list their exceptions by module; an exception that no longer crosses
the rule fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
CLIENT_SRC = Path(__file__).resolve().parents[2] / "client" / "src"  # the stocksync-client distribution
IO_LIBRARIES = {"sqlalchemy", "asyncpg", "nats", "structlog", "litestar", "httpx", "uvicorn", "prometheus_client"}
SQL_NAMES = {"text", "select", "insert", "update", "delete", "func", "bindparam", "any_", "literal", "tuple_"}

# SQL outside adapters/, each for a reason: migrate.py runs Alembic's schema migrations under an advisory
# lock (it is the schema's own adapter, beside migrations/).
SQL_OUTSIDE_ADAPTERS = {
    "stocksync.migrate",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py")) if "migrations" not in p.parts}


@cache
def imports(module: str) -> frozenset[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in the module, however nested."""
    found = set()
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update((node.module, alias.name) for alias in node.names)
    return frozenset(found)


def stocksync_imports(module: str) -> set[str]:
    """The stocksync modules it imports (``from stocksync import wire`` counts as stocksync.wire)."""
    names = set()
    for target, name in imports(module):
        if target == "stocksync" or target.startswith("stocksync."):
            names.add(f"{target}.{name}" if f"{target}.{name}" in modules() else target)
    return names


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def in_package(package: str) -> Iterator[str]:
    return (m for m in modules() if under(m, package))


def crossings(package: str, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        m: bad
        for m in in_package(package)
        if (bad := {i for i in stocksync_imports(m) if under(i, *forbidden)})
    }


def test_the_domain_imports_only_the_domain_the_contract_the_standard_library_and_msgspec() -> None:
    allowed = set(sys.stdlib_module_names) | {"msgspec", "stocksync", "stocksync_contract"}
    crossing = {}
    for module in in_package("stocksync.domain"):
        tops = {target.split(".")[0] for target, _ in imports(module)}
        outside = {i for i in stocksync_imports(module) if not under(i, "stocksync.domain")}
        if bad := (tops - allowed) | outside:
            crossing[module] = bad
    assert crossing == {}


def test_the_wire_module_does_no_io_and_builds_only_on_the_domain() -> None:
    tops = {target.split(".")[0] for target, _ in imports("stocksync.wire")}
    assert not tops & IO_LIBRARIES
    assert tops - set(sys.stdlib_module_names) <= {"msgspec", "stocksync", "stocksync_contract"}
    assert {i for i in stocksync_imports("stocksync.wire") if not under(i, "stocksync.domain")} == set()


def test_the_service_layer_imports_no_adapter_that_drives_it() -> None:
    """service/ is called by http/, messaging/, the CLI and the server: it never imports them."""
    driving = ("stocksync.messaging", "stocksync.http", "stocksync.cli", "stocksync.server")
    assert crossings("stocksync.service", driving) == {}


def client_imports(package: str) -> dict[str, set[str]]:
    """The top-level packages each module of a client distribution's package imports."""
    found = {}
    for path in sorted((CLIENT_SRC / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        tops |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        found[str(path.relative_to(CLIENT_SRC))] = tops - set(sys.stdlib_module_names)
    return found


def test_the_contract_is_pure_and_the_clients_bring_no_server_part() -> None:
    """A retailer's code installs stocksync-client alone: nothing of it imports ``stocksync``."""
    contract = client_imports("stocksync_contract")
    assert contract and all(tops <= {"msgspec", "stocksync_contract"} for tops in contract.values()), contract
    clients = client_imports("stocksync_client")
    allowed = {"msgspec", "nats", "httpx", "stocksync_contract", "stocksync_client"}
    assert clients and {m: t - allowed for m, t in clients.items() if t - allowed} == {}


@pytest.mark.parametrize(
    ("package", "others"),
    [
        ("stocksync.messaging.worker", ("stocksync.messaging.relay", "stocksync.contracts")),
        ("stocksync.messaging.relay", ("stocksync.messaging.worker", "stocksync.contracts")),
        ("stocksync.contracts", ("stocksync.messaging.worker", "stocksync.messaging.relay")),
        ("stocksync.service.reconciliation", ("stocksync.messaging",)),
    ],
)
def test_the_parts_that_speak_nats_meet_only_in_the_wire_module(package: str, others: tuple[str, ...]) -> None:
    assert crossings(package, others) == {}


def writes_sql(module: str) -> bool:
    return any(
        (target == "sqlalchemy" and name in SQL_NAMES) or target == "stocksync.adapters.tables"
        for target, name in imports(module)
    )


def test_sql_is_written_only_under_adapters() -> None:
    outside = {m for m in modules() if writes_sql(m) and not under(m, "stocksync.adapters")}
    assert outside - SQL_OUTSIDE_ADAPTERS == set(), "SQL belongs in adapters/"
    assert SQL_OUTSIDE_ADAPTERS - outside == set(), "no longer writes SQL: remove it from SQL_OUTSIDE_ADAPTERS"


def test_no_two_modules_import_each_other_round_a_circle() -> None:
    graph = {m: {i for i in stocksync_imports(m) if i in modules()} for m in modules()}
    circles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state[target] == 1:
                circles.append([*path[path.index(target) :], target])
            elif state[target] == 0:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module, [module])
    assert circles == []


def test_every_contract_struct_is_defined_once_in_the_contract() -> None:
    """The server imports the wire contract's Structs: no class of the server has a contract Struct's name."""
    contract = {
        node.name
        for path in (CLIENT_SRC / "stocksync_contract").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    server = {
        (module, node.name)
        for module in modules()
        for node in ast.walk(ast.parse(modules()[module].read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert {"Sale", "OrderRequest", "OrderBody", "OutcomeMessage", "Shortage"} <= contract
    assert {(module, name) for module, name in server if name in contract} == set()
