"""Click-and-collect: reserve (rule 5), collect and cancel (rule 6), read and list."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import uuid4

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from stocksync.adapters.queries import Queries
from stocksync.clock import Clock
from stocksync.domain.errors import EventIdConflict, UnknownReservation
from stocksync.domain.events import Cancel, Collect, decoder
from stocksync.domain.model import Reservation, ReservationStatus
from stocksync.http.auth import Access, listing_scope
from stocksync.http.errors import documented, refusal
from stocksync.http.schemas import (
    LocationIdQuery,
    ReservationIdPath,
    ReservationList,
    ReserveRequest,
    at_one_location,
    body_operation,
    read_body,
)
from stocksync.messages import ReservationBody, reservation_body
from stocksync.service.keys import ApiKey
from stocksync.service.ledger_service import LedgerService

_decode_reserve = decoder(ReserveRequest)


class ReservationController(Controller):
    path = "/reservations"
    tags = ["reservations"]

    @post(
        "/",
        operation_class=body_operation(ReserveRequest),
        responses={
            200: ResponseSpec(ReservationBody, description="the same body again: its reservation"),
            **documented(403, 404, 409, shortages=True),
        },
    )
    async def reserve(
        self,
        request: Request[ApiKey, Any, Any],
        key: NamedDependency[ApiKey],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
    ) -> Response[ReservationBody]:
        """Hold every line or none (201); 409 insufficient_stock with the shortages; 404 unknown_location."""
        body = await read_body(request, _decode_reserve)
        held, new = await place(body, key, ledger, queries, access, clock)
        return Response(held, status_code=201 if new else 200)

    @get("/", responses=documented(403))
    async def list_reservations(
        self,
        key: NamedDependency[ApiKey],
        queries: NamedDependency[Queries],
        location_id: LocationIdQuery = None,
        status: FromQuery[ReservationStatus | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> ReservationList:
        """Oldest first; pos and staff keys see their own locations only."""
        found = await queries.reservations(listing_scope(key, location_id), status, limit)
        return ReservationList(items=[reservation_body(reservation) for reservation in found])

    @get("/{reservation_id:str}", responses=documented(404))
    async def read(
        self,
        queries: NamedDependency[Queries],
        reservation_id: ReservationIdPath,
        location_id: LocationIdQuery = None,
    ) -> ReservationBody:
        """A reservation is its location and id: an id at several locations is 400 without ``location_id``."""
        return reservation_body(await _named(queries, reservation_id, location_id))

    @post("/{reservation_id:str}/collect", status_code=200, responses=documented(403, 404, 409))
    async def collect(
        self,
        key: NamedDependency[ApiKey],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
        reservation_id: ReservationIdPath,
        location_id: LocationIdQuery = None,
    ) -> ReservationBody:
        """Turn the hold into a sale; collecting again answers the same; else 409 reservation_not_held."""
        return await settle(Collect, reservation_id, location_id, key, ledger, queries, access, clock)

    @post("/{reservation_id:str}/cancel", status_code=200, responses=documented(403, 404, 409))
    async def cancel(
        self,
        key: NamedDependency[ApiKey],
        ledger: NamedDependency[LedgerService],
        queries: NamedDependency[Queries],
        access: NamedDependency[Access],
        clock: NamedDependency[Clock],
        reservation_id: ReservationIdPath,
        location_id: LocationIdQuery = None,
    ) -> ReservationBody:
        """Release the hold; cancelling again answers the same; 409 reservation_not_held otherwise."""
        return await settle(Cancel, reservation_id, location_id, key, ledger, queries, access, clock)


async def place(
    body: ReserveRequest, key: ApiKey, ledger: LedgerService, queries: Queries, access: Access, clock: Clock
) -> tuple[ReservationBody, bool]:
    """Rule 5 for ``key`` (the API's and the staff page's one way): the reservation and whether it is new
    (False: a repeat of one posted before, answered as it was); a refusal is raised."""
    await access.check(key, "reserve", body.location_id)
    if body.reservation_id is not None and (again := await _posted_before(queries, body)) is not None:
        return again, False
    reservation_id = body.reservation_id or f"res-{uuid4().hex}"
    result = await ledger.apply([body.event(reservation_id, clock(), source=f"http:{key.key_id}")])
    outcome = result.outcomes[0]
    if outcome.error == EventIdConflict.code and (again := await _posted_before(queries, body)):
        return again, False  # an identical request committed first
    if outcome.outcome == "rejected":
        raise refusal(outcome)
    return reservation_body(result.reservations[(body.location_id, reservation_id)]), True


async def _posted_before(queries: Queries, body: ReserveRequest) -> ReservationBody | None:
    """A reservation id posted before answers as it did (rule 10): its reservation, or its refusal again.

    Its reserve event cannot simply be applied again: the new ``occurred_at`` would make it a conflict.
    """
    assert body.reservation_id is not None
    found = await queries.outcomes(f"http:reserve:{body.reservation_id}", body.location_id)
    if not found:
        return None
    outcome = found[0]
    if outcome.outcome == "rejected":
        raise refusal(outcome)
    reservations = await queries.reservations_named(body.reservation_id, body.location_id)
    reservation = reservations[0] if reservations else None
    if reservation is None or not body.same_as(reservation):
        raise EventIdConflict(f"reservation {body.reservation_id!r} was already posted with another body")
    return reservation_body(reservation)


async def _named(queries: Queries, reservation_id: str, location_id: str | None) -> Reservation:
    """The reservation a path names: at ``location_id``, or at the one location that has the id."""
    where = f" at {location_id!r}" if location_id else ""
    missing = UnknownReservation(f"reservation {reservation_id!r} is not known{where}")
    found = await queries.reservations_named(reservation_id, location_id)
    return at_one_location(found, missing, f"reservation {reservation_id!r}")


async def settle(
    kind: type[Collect | Cancel],
    reservation_id: str,
    location_id: str | None,
    key: ApiKey,
    ledger: LedgerService,
    queries: Queries,
    access: Access,
    clock: Clock,
) -> ReservationBody:
    """Collect or cancel the reservation named (the API's and the staff page's one way); rule 6."""
    reservation = await _named(queries, reservation_id, location_id)
    return await _settle(kind, reservation, key, ledger, access, clock)


async def _settle(
    kind: type[Collect | Cancel],
    reservation: Reservation,
    key: ApiKey,
    ledger: LedgerService,
    access: Access,
    clock: Clock,
) -> ReservationBody:
    """One collect or cancel event at the reservation's own location, under a fresh event id; the key must
    act at that location."""
    event = kind(
        event_id=f"http:{uuid4().hex}",
        location_id=reservation.location_id,
        occurred_at=clock(),
        source=f"http:{key.key_id}",
        reservation_id=reservation.reservation_id,
    )
    await access.check(key, event.type, event.location_id)
    result = await ledger.apply([event])
    outcome, settled = result.outcomes[0], result.reservations[reservation.key]
    if outcome.outcome == "rejected":
        raise refusal(outcome, settled)
    return reservation_body(settled)
