"""Each HTTP request as a server span, continuing the caller's ``traceparent`` (while tracing is on)."""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry.trace import SpanKind

from stocksync import tracing


def trace_requests(app: ASGIApp) -> ASGIApp:
    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        name = f"{scope['method']} {scope['path']}"
        with tracing.span(name, parent=tracing.parent_of(headers), kind=SpanKind.SERVER):
            await app(scope, receive, send)

    return traced
