"""Identifier columns cross to PostgreSQL as one joined string each (`ledger_store.joined`), split there by
``string_to_array``: a value that would not come back as itself must be refused, never split into two."""

from __future__ import annotations

import pytest

from stocksync.adapters.ledger_store import SEPARATOR, joined


def test_identifiers_are_joined_by_the_separator() -> None:
    assert (
        joined(["store-1", "sku-9", "e:2026-12-08T01:00"])
        == f"store-1{SEPARATOR}sku-9{SEPARATOR}e:2026-12-08T01:00"
    )
    assert joined(["only"]) == "only"
    assert joined([]) == ""


@pytest.mark.parametrize(
    "values",
    [["a", f"b{SEPARATOR}c"], [f"{SEPARATOR}"], [""]],
    ids=["a value holding the separator", "the separator alone", "a lone empty string"],
)
def test_a_value_that_would_split_differently_is_refused(values: list[str]) -> None:
    with pytest.raises(ValueError, match="identifier"):
        joined(values)
