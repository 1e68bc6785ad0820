"""The log redaction every line passes: API key secrets and URL credentials never reach a renderer."""

from __future__ import annotations

import pytest

from stocksync.logs import outline, redact, scrub

SECRET = "Q" * 43
KEY = f"ssk_0123456789ab_{SECRET}"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"Bearer {KEY}", "Bearer ssk_0123456789ab_***"),
        ("ssk_nothex_abc", "ssk_***"),
        ("postgresql://stocksync:s3cret@db:5432/ledger", "postgresql://stocksync:***@db:5432/ledger"),
        ("postgresql://stocksync:p@ss@db/ledger", "postgresql://stocksync:***@db/ledger"),
        ("nats://tok3n@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://a:b@h1:4222,nats://c:d@h2:4222", "nats://a:***@h1:4222,nats://c:***@h2:4222"),
        ("host=db password=s3cret user=x", "host=db password=*** user=x"),
        ("postgresql://stocksync@db/ledger", "postgresql://***@db/ledger"),
        ("nothing to hide: 42 units", "nothing to hide: 42 units"),
    ],
)
def test_scrub_keeps_the_key_id_and_user_and_drops_the_secret(text: str, shown: str) -> None:
    assert scrub(text) == shown


def test_redact_reaches_every_field_nested_values_and_reprs() -> None:
    url = "nats://tok3n@127.0.0.1:4222,nats://till:pa55@127.0.0.1:4223"
    event = redact(
        None,
        "warning",
        {
            "event": "nats_unreachable",
            "url": url,
            "servers": [url],
            "error": ValueError(f"bad {KEY}"),
            "authorization": "anything",
            "retry_in_s": 0.2,
        },
    )
    rendered = repr(event)
    assert "tok3n" not in rendered and "pa55" not in rendered and SECRET not in rendered
    assert event["authorization"] == "[redacted]" and event["retry_in_s"] == 0.2
    assert event["url"] == "nats://***@127.0.0.1:4222,nats://till:***@127.0.0.1:4223"


def test_an_exception_outline_names_frames_and_types_but_not_messages() -> None:
    def parse(body: str) -> int:
        return int(body)

    body = "-".join(("MARKER", "body"))  # a literal would show in the frame's source line
    try:
        try:
            parse(body)
        except ValueError as error:
            raise RuntimeError(f"while parsing {body}") from error
    except RuntimeError as error:
        shown = outline(error)
    assert "MARKER" not in shown
    assert "builtins.ValueError" in shown and "builtins.RuntimeError" in shown and "in parse" in shown
