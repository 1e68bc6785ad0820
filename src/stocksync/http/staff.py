"""The store staff page, ``/staff``: look up, reserve, hand over and cancel, with numbers that move by
themselves (docs/staff.md).

Server-rendered Jinja pages and fragments; HTMX (vendored under ``static/``) swaps the fragments, and
``static/staff.js`` listens to ``GET /v1/stream`` for the live numbers. Signing in puts the staff key in an
HttpOnly, SameSite=Strict session cookie, read by these routes and by the feed (GET only; see `auth`). Every
write goes through the same functions as the API (`reservations.place`, `reservations.settle`) and must come
from the page itself (an ``HX-Request`` header, which no other site can make a browser send).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import msgspec
import structlog
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.response import Redirect, Template

from stocksync.adapters.queries import Queries
from stocksync.clock import Clock
from stocksync.domain.errors import InvalidRequest, StocksyncError, Unauthorized
from stocksync.domain.events import Cancel, Collect, Sku
from stocksync.domain.model import ReservationLine
from stocksync.domain.pickup import pickup_stores
from stocksync.http.auth import SESSION_COOKIE, Access
from stocksync.http.errors import answer
from stocksync.http.reservations import place, settle
from stocksync.http.schemas import ReservationIdPath, ReserveRequest
from stocksync.service.keys import ApiKey, KeyVerifier
from stocksync.service.ledger_service import LedgerService

log = structlog.get_logger("stocksync.staff")

STORE_COOKIE = "stocksync_store"
NEARBY_STORES = 5
HOLD_CHOICES = (
    (30, "30 minutes"),
    (60, "1 hour"),
    (120, "2 hours"),
    (240, "4 hours"),
    (1440, "1 day"),
    (2880, "2 days"),
    (10080, "7 days"),
)
DEFAULT_HOLD_MIN = 120

# What a shop assistant is told, by error code; `detail` is what the API would answer.
_WORDS = {
    "insufficient_stock": "Not enough stock to hold this. Nothing was reserved.",
    "unknown_location": "This store is not set up in stocksync yet. Please tell the office.",
    "unknown_reservation": "That reservation could not be found. Refresh the list and try again.",
    "reservation_not_held": "This reservation is already {status}: nothing was changed.",
    "forbidden": "Your staff key may not do this at this store.",
    "unauthorized": "You are signed out. Please sign in again.",
    "unavailable": "The stock system cannot be reached right now. Nothing was changed: try again soon.",
    "event_id_conflict": "This reservation number was already used for something else. Start a new one.",
}


class Session(msgspec.Struct, frozen=True):
    key: ApiKey
    store: str


async def signed_in(request: Request[Any, Any, Any]) -> Session | None:
    """The staff session of the cookie, or None (none, revoked, or not a staff key with a store)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    verifier: KeyVerifier = request.app.state.key_verifier
    try:
        key = await verifier.verify(token)
    except Unauthorized:
        return None
    if key.role != "staff" or not key.locations:
        return None
    chosen = request.cookies.get(STORE_COOKIE, "")
    return Session(key, chosen if chosen in key.locations else sorted(key.locations)[0])


def in_words(error: Exception) -> tuple[int, str]:
    """The status and the sentence a shop assistant reads for ``error``."""
    status, body = answer(error)
    code = body["error"]
    if code == "invalid_request":
        detail = str(body.get("detail", "a value is not valid"))
        return status, f"Please check the form: {detail[:1].lower()}{detail[1:].rstrip('.')}."
    words = _WORDS.get(code, "Something went wrong on our side. Please try again, or tell the office.")
    return status, words.format(status=body.get("status", "settled"))


def _fragment(name: str, status: int = 200, *, changed: bool = False, **context: Any) -> Template:
    """A page or fragment; ``changed``: the store's reservations changed, so the page reloads their list."""
    headers = {"HX-Trigger": "refresh-reservations"} if changed else None
    return Template(
        template_name=name, context=context, status_code=status, headers=headers, media_type=MediaType.HTML
    )


def _problem(error: Exception) -> Template:
    status, notice = _notice(error)
    return _fragment("_notice.html", status, **notice)


def _notice(error: Exception) -> tuple[int, dict[str, Any]]:
    """The status and the context of ``_notice.html`` for an error."""
    status, words = in_words(error)
    if status >= 500:
        log.warning("staff_page_error", error=type(error).__name__)
    return status, {"kind": "error", "words": words, "shortages": _shortages(error)}


def _shortages(error: Exception) -> list[Any]:
    return list(error.extra.get("shortages", ())) if isinstance(error, StocksyncError) else []


def _from_page(request: Request[Any, Any, Any]) -> None:
    """A write must come from the page (HTMX sets the header; a form on another site cannot)."""
    if request.headers.get("hx-request") != "true":
        raise InvalidRequest("send it from the staff page", field="HX-Request")


async def _required(request: Request[Any, Any, Any]) -> Session:
    """The session; without one the fragment answers 401 with ``HX-Redirect: /staff`` (to sign in)."""
    session = await signed_in(request)
    if session is None:
        raise _SignIn()
    return session


class _SignIn(Exception):
    """Raised where a fragment needs a session and there is none; answered by `signed_out`."""


def signed_out(request: Request[Any, Any, Any], _: Exception) -> Response[str]:
    return Response("", status_code=401, headers={"HX-Redirect": "/staff"})


class StaffPage(Controller):
    """The page and its fragments; outside ``/v1`` and the OpenAPI (it is HTML for people)."""

    path = "/staff"
    include_in_schema = False
    exception_handlers = {_SignIn: signed_out}

    @get("/")
    async def page(self, request: Request[Any, Any, Any], queries: NamedDependency[Queries]) -> Any:
        """The page of the signed-in staff member's store, else the sign-in form."""
        try:
            session = await signed_in(request)
            store = session and await queries.location(session.store)
        except StocksyncError as error:  # the database away: say so in words, as everywhere on the page
            status, words = in_words(error)
            return _fragment("sign_in.html", status, problem=words)
        if session is None:
            return _fragment("sign_in.html")
        status, lookup = await _lookup_in_page(queries, session.store, request.query_params.get("sku"))
        return _fragment(
            "page.html",
            status,
            **lookup,
            store_id=session.store,
            store=store,
            stores=sorted(session.key.locations),
            holds=HOLD_CHOICES,
            default_hold=DEFAULT_HOLD_MIN,
            new_id=_new_reservation_id(),
        )

    @post("/sign-in")
    async def sign_in(self, request: Request[Any, Any, Any]) -> Any:
        form = await request.form()
        presented = str(form.get("key", "")).strip()
        verifier: KeyVerifier = request.app.state.key_verifier
        try:
            key = await verifier.verify(presented)
        except StocksyncError as error:
            status, words = in_words(error)
            words = "That key is not valid, or it was revoked." if status == 401 else words
            return _fragment("sign_in.html", status, problem=words)
        if key.role != "staff" or not key.locations:
            return _fragment("sign_in.html", 403, problem="This page needs a staff key for a store.")
        log.info("staff_signed_in", key_id=key.key_id)
        return Redirect("/staff", status_code=303, cookies=[_cookie(request, SESSION_COOKIE, presented)])

    @post("/sign-out")
    async def sign_out(self, request: Request[Any, Any, Any]) -> Redirect:
        gone = [
            _cookie(request, SESSION_COOKIE, "", max_age=0),
            _cookie(request, STORE_COOKIE, "", max_age=0),
        ]
        return Redirect("/staff", status_code=303, cookies=gone)

    @post("/store")
    async def choose_store(self, request: Request[Any, Any, Any]) -> Redirect:
        """A key for several stores: which one this page is for."""
        chosen = str((await request.form()).get("store", ""))
        return Redirect("/staff", status_code=303, cookies=[_cookie(request, STORE_COOKIE, chosen)])

    @get("/lookup")
    async def lookup(self, request: Request[Any, Any, Any], queries: NamedDependency[Queries]) -> Any:
        session = await _required(request)
        found = await _looked_up(queries, session.store, request.query_params.get("sku", ""))
        if isinstance(found, Exception):
            return _problem(found)
        return _fragment("_lookup.html", store_id=session.store, **found)

    @post("/reservations")
    async def reserve(
        self,
        request: Request[Any, Any, Any],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
    ) -> Any:
        session = await _required(request)
        try:
            _from_page(request)
            body = _reserve_request(await request.form(), session.store)
            held, _ = await place(body, session.key, ledger, queries, access, clock)
        except (StocksyncError, msgspec.ValidationError) as error:
            return _problem(_invalid(error, "lines"))
        log.info("staff_reserved", reservation_id=held.reservation_id, location_id=held.location_id)
        return _fragment("_reserved.html", changed=True, reservation=held, new_id=_new_reservation_id())

    @get("/reservations")
    async def held(self, request: Request[Any, Any, Any], queries: NamedDependency[Queries]) -> Any:
        session = await _required(request)
        try:
            found = await queries.reservations([session.store], "held", 500)
        except StocksyncError as error:
            return _problem(error)
        return _fragment("_reservations.html", reservations=found)

    @post("/reservations/{reservation_id:str}/collect")
    async def collect(
        self,
        request: Request[Any, Any, Any],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
        reservation_id: ReservationIdPath,
    ) -> Any:
        """Hand over: the hold becomes a sale."""
        return await _settled(request, Collect, reservation_id, ledger, queries, access, clock)

    @post("/reservations/{reservation_id:str}/cancel")
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
        reservation_id: ReservationIdPath,
    ) -> Any:
        """The hold is released: the items are back on sale."""
        return await _settled(request, Cancel, reservation_id, ledger, queries, access, clock)


_SETTLED = {
    "collected": "Handed over: the sale is recorded.",
    "cancelled": "Cancelled: the items are back on sale.",
}


async def _settled(
    request: Request[Any, Any, Any],
    kind: type[Collect | Cancel],
    reservation_id: str,
    ledger: LedgerService,
    queries: Queries,
    access: Access,
    clock: Clock,
) -> Template:
    session = await _required(request)
    try:
        _from_page(request)
        done = await settle(kind, reservation_id, session.store, session.key, ledger, queries, access, clock)
    except StocksyncError as error:
        return _problem(error)
    log.info("staff_settled", reservation_id=reservation_id, status=done.status)
    reference = done.reference or reservation_id
    return _fragment("_notice.html", changed=True, kind="done", words=f"{reference}: {_SETTLED[done.status]}")


_FIELD_WORDS = (
    ("qty", "each quantity is a whole number from 1 to 100,000"),
    ("hold", "choose how long to hold it"),
    ("sku", "a sku is letters, digits, '-' and '_' (at most 64), starting with a letter or digit"),
    ("reference", "the reference is too long or holds characters that cannot be stored"),
    ("lines", "a reservation has 1 to 500 lines"),
)


def _invalid(error: Exception, field: str) -> Exception:
    """A form value msgspec refused, as a sentence about the field it names; other errors as they are."""
    if not isinstance(error, msgspec.ValidationError):
        return error
    message = str(error)
    named = message.rpartition(" - at ")[2].replace("`$.", "").strip("`") if " - at " in message else field
    return InvalidRequest(_field_words(named), field=named)


def _field_words(field: str) -> str:
    return next((words for part, words in _FIELD_WORDS if part in field), "a value is not valid")


def _reserve_request(form: Any, store: str) -> ReserveRequest:
    """The form as the API's body: the lines that name a sku, the hold in minutes, a reference."""
    lines = [
        {"sku": sku.strip(), "qty": _whole(qty, "lines.qty")}
        for sku, qty in zip(form.getall("sku", []), form.getall("qty", []), strict=False)
        if sku.strip()
    ]
    if not lines:
        raise InvalidRequest("add at least one line with a sku", field="sku")
    body = {
        "location_id": store,
        "channel": "staff",
        "lines": lines,
        "reservation_id": str(form.get("reservation_id", "")) or None,
        "ttl_seconds": _whole(form.get("hold_minutes", DEFAULT_HOLD_MIN), "hold") * 60,
        "reference": str(form.get("reference", "")).strip() or None,
    }
    return msgspec.convert(body, ReserveRequest)


def _whole(value: Any, field: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or len(text) > 9:
        raise InvalidRequest(_field_words(field), field=field)
    return int(text)


async def _lookup_in_page(queries: Queries, store_id: str, sku: str | None) -> tuple[int, dict[str, Any]]:
    """A look-up the form sent itself (Enter before the page's scripts loaded): its answer in the page."""
    if sku is None:
        return 200, {}
    found = await _looked_up(queries, store_id, sku)
    if isinstance(found, Exception):
        status, notice = _notice(found)
        return status, {"sku": sku, **notice}
    return 200, {"sku": sku, **found}


async def _looked_up(queries: Queries, store_id: str, sku: str) -> dict[str, Any] | Exception:
    """The looked-up sku's position here and the nearby stores that have it, or the error in words."""
    sku = sku.strip()
    try:
        if not sku:
            raise InvalidRequest("type or scan a sku first", field="sku")
        msgspec.convert(sku, Sku)
        position = await queries.position(store_id, sku)
        return {"position": position, "nearby": await _nearby(queries, store_id, sku)}
    except (StocksyncError, msgspec.ValidationError) as error:
        return _invalid(error, "sku")


async def _nearby(queries: Queries, store_id: str, sku: str) -> list[Any]:
    """Other pickup stores that have ``sku`` now, nearest to this store first."""
    here = await queries.location(store_id)
    origin = (here.lat, here.lon) if here and here.lat is not None and here.lon is not None else None
    stores, positions = await queries.pickup_stock([sku])
    wanted = [ReservationLine(sku=sku, qty=1)]
    found = pickup_stores(stores, positions, wanted, near=origin, limit=NEARBY_STORES + 1)
    return [store for store in found if store.location_id != store_id][:NEARBY_STORES]


def _new_reservation_id() -> str:
    """The form's reservation id, made when it is shown: a double submit holds once (rule 10)."""
    return f"staff-{uuid4().hex[:12]}"


def _cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int | None = None) -> Cookie:
    """HttpOnly, SameSite=Strict, Secure over HTTPS; a session cookie (gone when the browser closes)."""
    return Cookie(
        key=name,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=max_age,
    )
