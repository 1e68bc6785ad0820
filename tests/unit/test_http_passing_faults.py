"""A passing database fault answers 503 ``unavailable`` on every path, never a 500 (found by the fault campaign:
during a PostgreSQL shutdown the API's own reads, an API key's lookup among them, got "the database system is
shutting down", SQLSTATE 57P03, which SQLAlchemy raises as a bare DBAPIError at connect)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from stocksync.http.errors import answer


class _Driver(Exception):
    """What SQLAlchemy's asyncpg adapter raises: its own error, asyncpg's as the cause."""


def _dbapi_error(cause: Exception) -> DBAPIError:
    driver = _Driver(str(cause))
    driver.__cause__ = cause
    return DBAPIError("SELECT 1", None, driver)


@pytest.mark.parametrize(
    "cause",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_passing_database_fault_answers_503_not_500(cause: Exception) -> None:
    status, body = answer(_dbapi_error(cause))
    assert (status, body["error"]) == (503, "unavailable")


def test_any_other_database_error_is_still_a_500() -> None:
    status, body = answer(_dbapi_error(asyncpg.exceptions.UndefinedTableError("relation does not exist")))
    assert (status, body["error"]) == (500, "internal")
