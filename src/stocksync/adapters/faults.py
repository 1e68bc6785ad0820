"""What a database error means for the batch that met it, by type and SQLSTATE: a collision to retry at once,
a passing fault to retry later (never acknowledged, never dead-lettered), or neither (a defect, or the events).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_COLLISIONS = {"40001", "40P01"}  # serialization failure, deadlock detected
_PASSING_CLASSES = ("08", "53", "57")  # connection exception, insufficient resources, operator intervention

# What a database call can raise that these functions judge; anything else is not a database fault.
DATABASE_ERRORS = (DBAPIError, PoolTimeout, OSError)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE asyncpg reported, under SQLAlchemy's wrapper (on the driver error or its cause)."""
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


def collided(error: BaseException) -> bool:
    """Another transaction got in the way (deadlock, serialization): the same batch succeeds if run again."""
    return sqlstate(error) in _COLLISIONS


def passing_fault(error: BaseException) -> bool:
    """A database error a retry outlives, whatever the events: no connection (refused, dropped, no pooled
    connection free in time), the connection died under the transaction (shutdown, restart, failover,
    terminated backend), or the server refused the work for now (SQLSTATE classes 08, 53, 57)."""
    if isinstance(error, (OSError, OperationalError, InterfaceError, PoolTimeout)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    state = sqlstate(error)
    return isinstance(state, str) and state[:2] in _PASSING_CLASSES
