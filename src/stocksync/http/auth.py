"""Who may do what: bearer API keys on every ``/v1`` route, and each role's scope (the event rights are
``domain.access.EVENT_GRANTS``, shared with NATS).

| role | reads | writes |
| --- | --- | --- |
| admin | all | all, including locations and safety stock |
| ecommerce | all | reserve, collect, cancel at pickup-enabled locations |
| staff | all (reservation lists at its locations) | every event type at its locations |
| pos | all (reservation lists at its locations) | sale and return at its locations |

A GET may instead carry the staff page's session cookie (``stocksync_session``, HttpOnly, SameSite=Strict,
set by signing in at ``/staff``): the page's live feed is an EventSource, which cannot send a header. Writes
take the header only, so no other site can make a browser write with its cookie.

A missing, malformed or unknown key is 401; a key acting outside its scope 403. A write at a location that
does not exist is no scope question: the ledger refuses it as ``unknown_location`` (404, or a recorded
rejection).
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.openapi.spec import Reference, SecurityScheme

from stocksync.adapters.queries import Queries
from stocksync.domain.access import EVENT_GRANTS
from stocksync.domain.errors import Forbidden, Unauthorized
from stocksync.domain.model import Location
from stocksync.service.keys import SCOPED_ROLES, ApiKey, KeyVerifier

SECURITY_SCHEME = "apiKey"
SESSION_SCHEME = "staffSession"
SESSION_COOKIE = "stocksync_session"
_SAFE_METHODS = ("GET", "HEAD")
SECURITY: dict[str, SecurityScheme | Reference] = {
    SECURITY_SCHEME: SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="ssk_<key_id>_<secret>",
        description="An API key from `stocksync keys create`",
    ),
    SESSION_SCHEME: SecurityScheme(
        type="apiKey",
        name=SESSION_COOKIE,
        security_scheme_in="cookie",
        description="The staff page's session (sign in at `/staff`); accepted on GET requests only",
    ),
}


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """Puts the verified `ApiKey` of ``Authorization: Bearer <key>`` in ``request.user``.

    The verifier (and its cache) is ``app.state.key_verifier``: Litestar copies routers, not the app's state.
    """

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        verifier: KeyVerifier = connection.app.state.key_verifier
        return AuthenticationResult(user=await verifier.verify(presented_key(connection)), auth=None)


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The key of the ``Authorization`` header; on a GET without one, the staff session's."""
    header = _authorization(connection.scope)
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        return presented.strip()
    session = connection.cookies.get(SESSION_COOKIE, "")
    if not header and session and connection.scope.get("method") in _SAFE_METHODS:
        return session
    raise Unauthorized("send the API key as `Authorization: Bearer <key>`")


def _authorization(scope: Any) -> str:
    """The first ``Authorization`` header, read from the scope: on a GET, Litestar's `Headers` (every header,
    decoded into a multidict) were built for this one value alone."""
    for name, value in scope["headers"]:
        if name == b"authorization":  # ASGI header names are lower case
            return value.decode("latin-1")
    return ""


def provide_key(request: Request[ApiKey, Any, Any]) -> ApiKey:
    return request.user


def admin_only(connection: ASGIConnection[Any, ApiKey, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of the routes that change reference data (locations, safety stock, channels, webhooks)."""
    if connection.user.role != "admin":
        raise Forbidden("only an admin key may change locations, safety stock, channels or webhooks")


class Access:
    """Scope checks that need to know a location; looks it up only when the key alone cannot decide.

    A location it read is remembered for ``location_ttl_s`` (a reservation per request would otherwise
    read its store again each time), and forgotten at once when this process changes it: another API
    process sees a store's pickup switched off within that second.
    """

    def __init__(self, queries: Queries, *, location_ttl_s: float = 1.0) -> None:
        self.queries = queries
        self.location_ttl_s = location_ttl_s
        self._seen: dict[str, tuple[float, Location]] = {}

    async def check(self, key: ApiKey, action: str, location_id: str) -> None:
        """Raise `Forbidden` unless ``key`` may apply an event of type ``action`` at ``location_id``."""
        if key.role == "admin":
            return
        actions, where = EVENT_GRANTS[key.role]
        if action not in actions:
            raise Forbidden(f"a {key.role} key may not {action}")
        if where == "own" and location_id in key.locations:
            return
        location = await self._location(location_id)
        if location is None:
            return  # the ledger answers unknown_location
        if where == "own" or not location.pickup_enabled:
            raise Forbidden(f"this {key.role} key may not {action} at {location_id!r}")

    def forget(self, location_id: str) -> None:
        self._seen.pop(location_id, None)

    async def _location(self, location_id: str) -> Location | None:
        now = time.monotonic()
        seen = self._seen.get(location_id)
        if seen is not None and now - seen[0] < self.location_ttl_s:
            return seen[1]
        location = await self.queries.location(location_id)
        if location is not None:
            self._seen[location_id] = (now, location)
        return location


def listing_scope(key: ApiKey, location_id: str | None) -> list[str] | None:
    """Whose reservations ``key`` may list: its own locations for pos and staff; None means every location."""
    if key.role not in SCOPED_ROLES:
        return None if location_id is None else [location_id]
    if location_id is None:
        return sorted(key.locations)
    if location_id not in key.locations:
        raise Forbidden(f"this {key.role} key may not list reservations at {location_id!r}")
    return [location_id]
