"""How uvicorn serves the app: httptools (the C parser: h11 cost about a fifth of the API's CPU per request),
with its own refusals in the API's error format.

httptools refuses what is not HTTP before the app sees it: a malformed request, or a request line and headers
over 64 KiB. The largest request the API accepts (500 skus and 100 locations of 64 characters) is about 42 KB,
so only requests past every documented bound meet this; they get the API's JSON 400, not uvicorn's text/plain.
"""

from __future__ import annotations

from typing import Any

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from stocksync.http.schemas import ErrorBody

NOT_HTTP = msgspec.json.encode(
    ErrorBody(
        error="invalid_request",
        detail="not a valid HTTP request: a well-formed request line and headers, under 64 KiB together",
        field="request",
    )
)


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose 400 for an unparsable request is the API's error body, and which
    lends each request a way to drop its connection at once (scope extension ``stocksync.abort``): the live
    feed's only way to end a client that stopped reading, whose response is stuck behind a full socket."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"stocksync.abort": self.transport.abort}  # type: ignore[typeddict-unknown-key]

    def send_400_response(self, msg: str) -> None:
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(NOT_HTTP))
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", NOT_HTTP]))
        self.transport.close()


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The one uvicorn configuration, for `stocksync serve` and the tests that serve the app for real."""
    options = {"log_config": None, "access_log": False, **options}
    return uvicorn.Config(app, host=host, port=port, http=JsonErrorsProtocol, **options)
