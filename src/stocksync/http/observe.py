"""Every HTTP request observed once: its request id, its access log line, its count and its latency.

`observed` wraps the app's whole ASGI handler (routing and error answers included), so a 404 for no route
and a 500 are seen as surely as a 200. The request id is the caller's ``x-request-id`` when it is a sane
token (a load balancer's or a client's, so one id follows a request across systems), else a fresh one; it
is echoed on the answer and bound into the structlog context, so every line logged while serving the
request carries it.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stocksync import metrics

log = structlog.get_logger("stocksync.http.access")

HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes come every few seconds from machines: their lines go at debug, not info.
_QUIET_ROUTES = {"/health/live", "/health/ready", "/metrics"}


def request_id(scope: Scope) -> str:
    """The caller's id when sane, else a new one (never a value that could forge a log line)."""
    for name, value in scope.get("headers", ()):
        if name == HEADER and _SANE_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


@functools.lru_cache(maxsize=1024)  # labels() per request cost a tenth of the access record's CPU
def _series(route: str, method: str, status: int) -> tuple[Any, Any]:
    counted = metrics.HTTP_REQUESTS.labels(route, method, str(status))
    return counted, metrics.HTTP_SECONDS.labels(route, method)


def observed(app: ASGIApp) -> ASGIApp:
    """``app`` with every HTTP request counted, timed, logged and given its request id."""

    async def observe(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        answered: dict[str, Any] = {"status": 500}  # what escapes unanswered is a 500

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await app(scope, receive, sending)
            finally:
                _record(scope, answered["status"], time.perf_counter() - started)

    return observe


def _record(scope: Scope, status: int, seconds: float) -> None:
    route = scope.get("path_template") or "unmatched"  # a template, never the raw path: bounded labels
    method = scope["method"]
    counted, timed = _series(route, method, status)
    counted.inc()
    timed.observe(seconds)
    user = scope.get("user")
    line = log.debug if route in _QUIET_ROUTES else log.info
    line(
        "http_request",
        method=method,
        route=route,  # not the path: its ids are the caller's content (tests/e2e/test_log_secrets.py)
        status=status,
        ms=round(seconds * 1000, 2),
        key_id=getattr(user, "key_id", None),
    )
