"""How uvicorn serves the app: httptools (the C parser: h11 cost about a fifth of the API's CPU per request),
with its own refusals in the API's error format, and each answer written to the socket at once.

httptools refuses what is not HTTP before the app sees it: a malformed request, or a request line and headers
over 64 KiB. The largest request the API accepts (500 skus and 100 locations of 64 characters) is about 42 KB,
so only requests past every documented bound meet this; they get the API's JSON 400, not uvicorn's text/plain.
"""

from __future__ import annotations

import asyncio
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


# Writes held back longer than this go out at once: a body written in many chunks within one step stays bounded.
_HOLD_MAX = 64 * 1024


class CoalescedWrites:
    """A transport whose writes of one event-loop step go to the socket together, at the end of the step.

    uvicorn writes an answer's status line and headers, then its body: two send() calls and, with TCP_NODELAY,
    two segments for every small JSON answer, each a wake-up of the reader. The send() of a loopback socket
    was about a tenth of the API's CPU per availability request; the client paid for the second segment too.
    Nothing waits longer than the step that wrote it (a stream's head included), and a close sends what is
    held first, so the bytes and their order on the wire are unchanged.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            asyncio.get_running_loop().call_soon(self.flush)
        self._held.append(data)
        self._size += len(data)
        if self._size > _HOLD_MAX:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._size = [], 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held, self._size = [], 0
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self.transport, name)


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose 400 for an unparsable request is the API's error body, whose writes
    are coalesced (`CoalescedWrites`), and which lends each request a way to drop its connection at once
    (scope extension ``stocksync.abort``): the live feed's only way to end a client that stopped reading,
    whose response is stuck behind a full socket."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport))  # type: ignore[arg-type]

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
