"""A dead letter always fits the DLQ (issue 15, point 2), and bodies nested too deep are refused, not raised."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from stocksync.domain.events import TooDeep, decode_inbound
from stocksync.messaging.worker import LETTER_MAX_BYTES, Refused, dead_letter_of, decode_message
from stocksync.service.reconciliation.inbound import _body_id
from stocksync.wire import DeadLetter

DLQ_MESSAGE_LIMIT = 512 * 1024


def message(
    data: bytes, headers: dict[str, str] | None = None, subject: str = "stocksync.in.s-1.sale"
) -> Msg:
    return Msg(_client=None, subject=subject, data=data, headers=headers)  # type: ignore[arg-type]


def letter(msg: Msg, detail: str = "why") -> tuple[bytes, DeadLetter]:
    _, dead = dead_letter_of(msg, Refused("undecodable", detail))
    encoded = msgspec.json.encode(dead)
    return encoded, msgspec.json.decode(encoded, type=DeadLetter)


def original(dead: DeadLetter) -> bytes:
    return base64.b64decode(dead.body) if dead.body_encoding == "base64" else dead.body.encode()


def test_a_small_body_is_copied_whole() -> None:
    _, dead = letter(message(b"{not json", {"Nats-Msg-Id": "e-1"}))
    assert (dead.body, dead.body_encoding, dead.body_bytes) == ("{not json", "utf-8", 9)
    assert (dead.body_truncated, dead.headers_truncated, dead.headers) == (
        False,
        False,
        {"Nats-Msg-Id": "e-1"},
    )


def test_the_worst_case_letter_fits_the_dlq_and_says_what_it_cut() -> None:
    """Control bytes (six bytes each, escaped), headers and detail all far too large, a body at the limit."""
    body = bytes(range(1, 32)) * (510 * 1024 // 31)
    headers = {f"\x01{n}" * 200: "\x02" * 5_000 for n in range(100)}

    encoded, dead = letter(message(body, headers), detail="\x03" * 100_000)

    assert len(encoded) <= LETTER_MAX_BYTES < DLQ_MESSAGE_LIMIT
    assert (dead.body_truncated, dead.headers_truncated, dead.body_bytes) == (True, True, len(body))
    assert body.startswith(original(dead)) and len(original(dead)) > 10_000
    assert len(dead.headers) == 32 and len(dead.detail) <= 2048


@settings(max_examples=30, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=600 * 1024) | st.text(max_size=200_000).map(str.encode),
    repeat=st.integers(1, 8),
)
def test_any_body_gives_a_letter_under_the_limit_holding_a_prefix_of_it(body: bytes, repeat: int) -> None:
    body = body * repeat
    encoded, dead = letter(message(body))
    assert len(encoded) <= LETTER_MAX_BYTES
    assert body.startswith(original(dead))
    assert dead.body_truncated == (len(original(dead)) < len(body))


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_json_nested_too_deep_is_a_decode_error_everywhere(depth: int) -> None:
    body = b'{"event_id": "e-1", "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(TooDeep):
        decode_inbound(body)
    with pytest.raises(Refused) as refused:
        decode_message("stocksync.in.s-1.sale", None, body)
    assert refused.value.error == "too_deep"
    assert _body_id(body) is None  # the nightly reconciliation reads such bodies too
