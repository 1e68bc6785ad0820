"""Every error answer, from whatever was raised: ``{"error": "<code>", "detail": "<sentence>", ...extras}``.

`answer` is the one place an exception becomes a status. Validation failures are all 400 ``invalid_request``
with ``field`` naming what failed (``lines[0].qty``, ``sku``, ``body`` when the body is not JSON at all): one
status for every malformed input, query or body, so a client has one rule to follow. A body over 256 KiB is
413 ``body_too_large``. Anything unexpected is a 500 ``internal`` whose cause is logged, never answered.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.routes import HTTPRoute

from stocksync import metrics
from stocksync.adapters.faults import passing_fault
from stocksync.domain.errors import (
    REFUSALS,
    Forbidden,
    InvalidRequest,
    LedgerRefusal,
    NotFound,
    ReservationNotHeld,
    StocksyncError,
    Unauthorized,
    Unavailable,
)
from stocksync.domain.model import Outcome, Reservation
from stocksync.http.schemas import ErrorBody, ShortageError
from stocksync.logs import outline

log = structlog.get_logger("stocksync.http")

# Checked in order: UnknownLocation is both a NotFound and a LedgerRefusal, and answers 404.
_STATUSES: tuple[tuple[type[StocksyncError], int], ...] = (
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (LedgerRefusal, 409),
    (Unavailable, 503),
)
_CODES = {400: "invalid_request", 413: "body_too_large"}
_PARAMETER = re.compile(r"parameter '(?P<name>[^']+)'")


def answer(error: Exception) -> tuple[int, dict[str, Any]]:
    """The status and body for ``error``."""
    if isinstance(error, StocksyncError):
        status = next((status for kind, status in _STATUSES if isinstance(error, kind)), 500)
        return status, {"error": error.code, "detail": error.detail, **error.extra}
    if isinstance(error, ValidationException):
        return 400, {"error": _CODES[400], **_named(error)}
    if isinstance(error, HTTPException):
        status = error.status_code
        code = _CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
        return status, {"error": code, "detail": error.detail}
    if passing_fault(error):  # as the ledger decides (a pool timeout too): retry later
        return 503, {"error": Unavailable.code, "detail": "the database is unreachable; retry later"}
    return 500, {"error": "internal", "detail": "internal error"}


_MEANINGS = {
    400: "invalid_request: a parameter or body field is not valid; `field` names it",
    401: "unauthorized: no API key, or a malformed, unknown or revoked one",
    403: "forbidden: the key's role or locations do not cover this",
    404: "not_found, unknown_location or unknown_reservation",
    409: "the ledger refused it and recorded the refusal; nothing moved",
    413: "body_too_large: the body is over 256 KiB",
    503: "unavailable: the database is unreachable; nothing was applied, retry later",
}


def documented(*statuses: int, shortages: bool = False) -> dict[int, ResponseSpec]:
    """A ``/v1`` operation's own error answers for OpenAPI (403, 404, 409: what only its code knows); the
    ones every operation shares are added by `document_errors`. ``shortages``: its 409 may be a
    `ShortageError`."""
    bodies = {409: ShortageError | ErrorBody} if shortages else {}
    return {
        status: ResponseSpec(
            bodies.get(status, ErrorBody), description=_MEANINGS[status], generate_examples=False
        )
        for status in sorted(statuses)
    }


# What a handler's signature may take that is neither a dependency nor a request parameter.
_NOT_PARAMETERS = {"request", "scope", "state", "socket", "headers", "cookies", "query"}


def document_errors(app: Litestar, prefix: str = "/v1/") -> None:
    """Give every operation under ``prefix`` the error answers it shares with all others, before the OpenAPI
    is built: 401 and 503 (no valid key; the database down), 400 when it takes a parameter or a body (in
    place of Litestar's default 400 body, which `answer` never sends), 413 when it reads a body. What a
    route declares itself (`documented`) stands. Done once here, in app assembly, so a new route is
    documented right without asking."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path_format.startswith(prefix):
            continue
        for handler in route.route_handlers:
            if "OPTIONS" not in handler.http_methods:
                shared = documented(*_shared_statuses(handler))
                handler.responses = {**shared, **(handler.responses or {})}


def _shared_statuses(handler: HTTPRouteHandler) -> set[int]:
    taken = set(handler.parsed_fn_signature.parameters)
    reads_body = getattr(handler.operation_class, "reads_body", False) or "data" in taken
    parameters = taken - set(handler.resolve_dependencies()) - _NOT_PARAMETERS
    return {401, 503} | ({400} if parameters or reads_body else set()) | ({413} if reads_body else set())


def _named(error: ValidationException) -> dict[str, str]:
    """Litestar's failed query or path parameter as our ``detail`` and ``field``."""
    if isinstance(error.extra, list) and error.extra and isinstance(error.extra[0], dict):
        first = error.extra[0]
        return {"detail": str(first.get("message", error.detail)), "field": str(first.get("key", ""))}
    named = _PARAMETER.search(error.detail)  # "Missing required query parameter 'sku' for path ..."
    return {"detail": error.detail, "field": named["name"] if named else "request"}


def handle(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """Litestar's handler for every exception (app-wide)."""
    status, body = answer(error)
    if status == 500:
        # Frames and types only, not exc_info: a renderer that shows frame locals would print the request's
        # key, and an exception's message may quote its body.
        trace = outline(error)
        log.error("http_internal_error", method=request.method, path=request.url.path, exception=trace)
    metrics.HTTP_ERRORS.labels(body["error"]).inc()
    headers = error.headers if isinstance(error, HTTPException) else None
    return Response(msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)


def refusal(outcome: Outcome, reservation: Reservation | None = None) -> LedgerRefusal:
    """The recorded refusal of an event as the error it answers with, shortages and status included."""
    assert outcome.error is not None
    extra: dict[str, Any] = {}
    if outcome.shortages:
        extra["shortages"] = outcome.shortages
    if outcome.error == ReservationNotHeld.code and reservation is not None:
        extra["status"] = reservation.status
    return REFUSALS[outcome.error](outcome.detail or outcome.error, **extra)
