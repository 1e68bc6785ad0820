"""schemathesis against the app's own ``/schema/openapi.json``, with the key of every role: valid and invalid
requests for every operation find no 5xx and no answer the schema does not document (status, content type,
body).

The API runs in a uvicorn thread over a database of this module's own (schemathesis writes random locations,
which other tests listing pickup stores should not meet); a few stores, stock and a reservation are seeded so
that not every request ends at an empty ledger.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stocksync.adapters.database import create_engine
from stocksync.http.app import create_app
from stocksync.migrate import migrate_database
from stocksync.service.keys import create_key
from stocksync.service.ledger_service import GroupCommitLedger
from tests.support import drop_database, make_database
from tests.support_http import LiveApi, now_iso

# Per operation and generation mode, each sent with every role's key: about a minute and a half here.
MAX_EXAMPLES = int(os.environ.get("STOCKSYNC_TEST_FUZZ_EXAMPLES", "10"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]  # not negative_data_rejection: the API ignores query parameters it does not know, as HTTP APIs do
_turn = itertools.count()
OWN, OTHER, CLOSED = "store-own", "store-other", "store-closed"  # pickup stores, and one that is not


def _keys(database_url: str) -> dict[str, str]:
    async def make() -> dict[str, str]:
        engine = create_engine(database_url, pool_size=1)
        try:
            return {
                "admin": await create_key(engine, "admin"),
                "ecommerce": await create_key(engine, "ecommerce"),
                "staff": await create_key(engine, "staff", [OWN]),
                "pos": await create_key(engine, "pos", [OWN]),
            }
        finally:
            await engine.dispose()

    return asyncio.run(make())


def _seed(url: str, admin: str) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as client:
        for location_id, pickup, lat in ((OWN, True, 52.37), (OTHER, True, 52.36), (CLOSED, False, 52.35)):
            body = {"kind": "store", "name": location_id, "pickup_enabled": pickup, "lat": lat, "lon": 4.89}
            assert client.put(f"/v1/locations/{location_id}", json=body).status_code == 200
            receipt = {
                "event_id": f"seed:{location_id}",
                "type": "receipt",
                "location_id": location_id,
                "occurred_at": now_iso(),
                "lines": [{"sku": "SKU-1", "qty": 50}, {"sku": "SKU-2", "qty": 5}],
            }
            assert client.post("/v1/events", json=receipt).json()["outcome"] == "applied"
        held = {"reservation_id": "res-1", "location_id": OWN, "channel": "staff"}
        held["lines"] = [{"sku": "SKU-1", "qty": 1}]
        assert client.post("/v1/reservations", json=held).status_code == 201


@pytest.fixture(scope="module")
def live(postgres_url: str) -> Iterator[tuple[LiveApi, dict[str, str]]]:
    database_url = make_database(postgres_url)
    try:
        migrate_database(database_url)
        keys = _keys(database_url)
        api = LiveApi(database_url)
        api.start()
        try:
            assert httpx.get(f"{api.url}/schema/openapi.json").json() == OPENAPI
            _seed(api.url, keys["admin"])
            yield api, keys
        finally:
            api.stop()
    finally:
        drop_database(postgres_url, database_url)


def _openapi() -> dict[str, Any]:
    """What the app serves at ``/schema/openapi.json`` (the fixture checks that), known at collection time:
    schemathesis's lazy ``from_fixture`` does not work with pytest 9."""
    engine = create_engine("postgresql://schema@127.0.0.1/schema")  # never connects
    served = create_app(engine=engine, ledger=GroupCommitLedger(engine)).openapi_schema.to_schema()
    return json.loads(json.dumps(served))  # as sent: tuples become lists


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(copy.deepcopy(OPENAPI))  # it edits what it is given


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    # The same examples every run, CI included. (A random run once found ~500 skus of ~100 bytes each,
    # a request line uvicorn's parser refused as text/plain: tests/integration/test_http_protocol.py.)
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_to_every_role_is_documented_and_none_is_a_server_error(
    case: schemathesis.Case, live: tuple[LiveApi, dict[str, str]]
) -> None:
    """Fuzzed cases go with every role's key; the coverage phase's hundreds of boundary cases per operation
    each with the next role's, which keeps the run within two minutes."""
    api, keys = live
    every = list(keys.values())
    if case.meta is not None and case.meta.phase.name.value == "coverage":
        every = [every[next(_turn) % len(every)]]
    for key in every:
        case.call_and_validate(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
