"""Events over HTTP: the NATS envelope, applied with the same rules and the same exactly-once record."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from stocksync.adapters.queries import Queries
from stocksync.domain.errors import InvalidRequest, NotFound
from stocksync.domain.events import EVENT_ID_PATTERN, InboundEvent, decode_inbound
from stocksync.http.auth import Access
from stocksync.http.errors import documented
from stocksync.http.schemas import EventAnswer, LocationIdQuery, at_one_location, body_operation, read_body
from stocksync.messages import OutcomeMessage, outcome_message, reservation_body
from stocksync.service.keys import ApiKey
from stocksync.service.ledger_service import LedgerService

_EVENT_ID = re.compile(EVENT_ID_PATTERN)


class EventController(Controller):
    path = "/events"
    tags = ["events"]

    @post(
        "/",
        status_code=200,
        operation_class=body_operation(InboundEvent),
        responses=documented(403),
    )
    async def apply(
        self,
        request: Request[ApiKey, Any, Any],
        key: NamedDependency[ApiKey],
        ledger: NamedDependency[LedgerService],
        access: NamedDependency[Access],
    ) -> EventAnswer:
        """200 with the outcome: a valid event the ledger refuses is recorded and answered ``rejected``."""
        event = await read_body(request, decode_inbound)
        await access.check(key, event.type, event.location_id)
        result = await ledger.apply([event])
        outcome = result.outcomes[0]
        reservation = result.reservations.get((outcome.location_id, outcome.reservation_id or ""))
        return EventAnswer(
            event_id=outcome.event_id,
            outcome=outcome.outcome,
            error=outcome.error,
            reservation=reservation_body(reservation) if reservation else None,
        )

    @get("/{event_id:path}", responses=documented(404))
    async def outcome(
        self,
        request: Request[ApiKey, Any, Any],
        queries: NamedDependency[Queries],
        event_id: FromPath[str],
        location_id: LocationIdQuery = None,
    ) -> OutcomeMessage:
        """The recorded outcome of an event (its id percent-encoded where it holds ``?``, ``#`` or ``%``).

        An event is its location and id together (rule 10): without ``location_id``, an id recorded at
        several locations is 400 asking for one.
        """
        event_id = _exact_event_id(request, event_id)
        if not _EVENT_ID.fullmatch(event_id):
            raise InvalidRequest("an event id is 1..128 printable ASCII characters", field="event_id")
        where = f" at {location_id!r}" if location_id else ""
        missing = NotFound(f"no event {event_id!r} was recorded{where}")
        found = await queries.outcomes(event_id, location_id)
        return outcome_message(at_one_location(found, missing, f"event {event_id!r}"))


def _exact_event_id(request: Request[Any, Any, Any], event_id: str) -> str:
    """The id as sent: Litestar's path parameter collapses ``//`` and drops a trailing ``/``."""
    raw: bytes | None = request.scope.get("raw_path")
    if raw and (sent := raw.decode("latin-1").partition("?")[0].partition("/events/")[2]):
        return unquote(sent)
    return event_id.removeprefix("/")
