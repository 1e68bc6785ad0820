"""Fault classification on SQLAlchemy's own error types: what is retried at once, what is a passing fault
(never acknowledged), and what is neither."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from stocksync.adapters.faults import collided, passing_fault, sqlstate


def wrapped(driver_error: Exception, **options) -> DBAPIError:
    """As SQLAlchemy raises a driver error: the statement, the parameters and the original."""
    return DBAPIError("UPDATE positions SET …", {}, driver_error, **options)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access"),
    ],
)
def test_a_collision_is_retried_at_once_and_is_no_outage(error: Exception) -> None:
    assert collided(wrapped(error)) and not passing_fault(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        OSError("connection refused"),
        PoolTimeout("QueuePool limit reached, connection timed out"),
        OperationalError("SELECT 1", {}, ConnectionResetError()),
        InterfaceError("SELECT 1", {}, Exception("connection is closed")),
        wrapped(Exception("the backend went away"), connection_invalidated=True),
        wrapped(asyncpg.CannotConnectNowError("the database system is starting up")),  # 57P03
        wrapped(asyncpg.TooManyConnectionsError("too many clients")),  # 53300
        wrapped(asyncpg.AdminShutdownError("terminating connection")),  # 57P01
    ],
)
def test_a_passing_fault_is_told_by_type_or_sqlstate(error: BaseException) -> None:
    assert passing_fault(error) and not collided(error)


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT …", {}, asyncpg.UniqueViolationError("duplicate key")),  # 23505: a conflict
        wrapped(asyncpg.NumericValueOutOfRangeError("out of range")),  # 22003: the event's numbers
        ValueError("a defect of ours"),
    ],
)
def test_what_a_retry_does_not_change_is_no_passing_fault(error: BaseException) -> None:
    assert not passing_fault(error) and not collided(error)


def test_the_sqlstate_is_read_through_the_wrapper() -> None:
    assert sqlstate(wrapped(asyncpg.DeadlockDetectedError("x"))) == "40P01"
    assert sqlstate(ValueError()) is None
