"""One error hierarchy. Each kind carries a machine code; adapters map kinds to HTTP statuses in one place."""

from __future__ import annotations

from typing import Any


class StocksyncError(Exception):
    """Base of every error stocksync reports to a caller."""

    code = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(StocksyncError):
    """A body or parameter that is not a valid message: never recorded."""

    code = "invalid_request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, **({"field": field} if field else {}))


class Unauthorized(StocksyncError):
    code = "unauthorized"


class Forbidden(StocksyncError):
    code = "forbidden"


class NotFound(StocksyncError):
    code = "not_found"


class LedgerRefusal(StocksyncError):
    """A valid event the ledger refuses (rule 11): recorded as rejected, moves nothing."""


class UnknownLocation(LedgerRefusal, NotFound):
    code = "unknown_location"


class UnknownReservation(LedgerRefusal, NotFound):
    code = "unknown_reservation"


class InsufficientStock(LedgerRefusal):
    code = "insufficient_stock"


class ReservationNotHeld(LedgerRefusal):
    code = "reservation_not_held"


class ReservationExists(LedgerRefusal):
    code = "reservation_exists"


class EventIdConflict(LedgerRefusal):
    code = "event_id_conflict"


class UnknownChannel(NotFound):
    code = "unknown_channel"


class UnknownOrder(LedgerRefusal, NotFound):
    code = "unknown_order"


class ReturnNotInOrder(LedgerRefusal):
    """A return naming an online order that did not ship those units (or not that many, counting what came
    back before): the units are not the order's, so they are not restocked as its return."""

    code = "return_not_in_order"


class OrderNotAllocated(LedgerRefusal):
    """Ship or cancel of an order that is no longer allocated (shipped, cancelled or expired)."""

    code = "order_not_allocated"


class OrderIdConflict(LedgerRefusal):
    """The order id was placed before with other lines (or names a reservation that is not the order's)."""

    code = "order_id_conflict"


REFUSALS: dict[str, type[LedgerRefusal]] = {
    kind.code: kind
    for kind in (
        UnknownLocation,
        UnknownReservation,
        InsufficientStock,
        ReservationNotHeld,
        ReservationExists,
        EventIdConflict,
        OrderNotAllocated,
        OrderIdConflict,
        UnknownOrder,
        ReturnNotInOrder,
    )
}


class Unavailable(StocksyncError):
    """A passing fault (the database unreachable): retry later; nothing was applied."""

    code = "unavailable"
