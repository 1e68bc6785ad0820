"""The SQLAlchemy async engine on asyncpg, from a plain ``postgresql://`` URL."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ARRAY, Text, any_, bindparam
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import BinaryExpression, BindParameter


def async_url(database_url: str) -> str:
    """``postgresql://`` (as settings and psql spell it) to SQLAlchemy's asyncpg form."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("the database URL must start with postgresql://")
    return f"postgresql+asyncpg://{rest}"


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,  # no pre-ping round trip per checkout: a dead connection fails once, as Unavailable
        connect_args={"server_settings": {"application_name": "stocksync"}},
    )


def ids_param(name: str) -> BindParameter:
    """A named ``text[]`` parameter, for statements built once and compared with ``= ANY(...)``."""
    return bindparam(name, type_=ARRAY(Text))


def any_of(values: Iterable[str]) -> BinaryExpression:
    """``= ANY(:array)``: one bind parameter for a list of ids, where ``IN`` binds (and compiles) one per id."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))
