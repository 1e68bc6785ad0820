"""Poison bodies over HTTP (issue 15, point 1): JSON nested too deep is a 400 naming ``body``, never a 500."""

from __future__ import annotations

import pytest

from tests.support_http import Api, admin, client, engine, now_iso, unique  # noqa: F401


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("path", ["/v1/events", "/v1/reservations"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_a_body_nested_too_deep_is_400_naming_the_body(admin: Api, path: str, depth: int) -> None:
    store = await admin.store()
    envelope = (
        f'{{"event_id": "{unique("deep")}", "type": "sale", "location_id": "{store}",'
        f' "occurred_at": "{now_iso()}", "lines": [{{"sku": "SKU-1", "qty": 1}}], "x": '
    ).encode()

    answer = await admin.post(
        path, content=envelope + nested(depth) + b"}", headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"], answer.json()["field"]) == ("invalid_request", "body")
    assert "too deeply" in answer.json()["detail"]
    assert (await admin.get("/health/live")).status_code == 200


async def test_a_location_body_nested_too_deep_is_400(admin: Api) -> None:
    answer = await admin.put(
        f"/v1/locations/{unique('store')}",
        content=b'{"kind": "store", "name": "x", "extra": ' + nested(5_000) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert (answer.status_code, answer.json()["field"]) == (400, "body")
