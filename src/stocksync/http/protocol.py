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


class CoalescedWrites:
    """A transport that holds a write back until the next one, to send both at once, or until the end of the
    event loop's step: an answer's head and body leave in one send().

    uvicorn writes an answer's status line and headers, then its body: two send() calls and, with TCP_NODELAY,
    two segments for every small JSON answer, each a wake-up of the reader. A lone write (a stream's head, a
    chunk) waits no longer than the step that wrote it, and a close sends what is held first, so the bytes and
    their order on the wire are unchanged.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()  # once: each get_running_loop() is a getpid() syscall
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self.transport.writelines((held, data))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = None
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
