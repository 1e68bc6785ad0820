"""The SQLAlchemy async engine on asyncpg, from a plain ``postgresql://`` URL.

TLS is set in the URL as for psql: ``?sslmode=verify-full&sslrootcert=ca.pem[&sslcert=c.pem&sslkey=k.pem]``
(asyncpg through SQLAlchemy takes none of these, so they become its ``ssl`` argument here).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy import ARRAY, Text, any_, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import BinaryExpression, BindParameter


def async_url(database_url: str) -> str:
    """``postgresql://`` (as settings and psql spell it) to SQLAlchemy's asyncpg form."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("the database URL must start with postgresql://")
    return f"postgresql+asyncpg://{rest}"


_TLS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


def tls_options(database_url: str) -> tuple[str, dict[str, Any]]:
    """The URL without its libpq TLS parameters, and asyncpg's ``ssl`` argument made of them."""
    parts = urlsplit(database_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls = {name: value for name, value in query if name in _TLS}
    if not tls:
        return database_url, {}
    rest = parts._replace(query=urlencode([(n, v) for n, v in query if n not in _TLS])).geturl()
    mode = tls.get("sslmode")
    if mode == "disable":
        return rest, {"ssl": False}
    if not ({"sslrootcert", "sslcert"} & tls.keys()):
        return rest, {"ssl": mode or "prefer"}
    context = ssl.create_default_context(cafile=tls.get("sslrootcert"))
    context.check_hostname = mode == "verify-full"
    if mode in ("allow", "prefer") or "sslrootcert" not in tls:
        context.verify_mode = ssl.CERT_NONE  # libpq checks the server's certificate only with a root cert
    if "sslcert" in tls:
        context.load_cert_chain(tls["sslcert"], tls.get("sslkey"))
    return rest, {"ssl": context}


def create_engine(database_url: str, *, pool_size: int = 10, max_overflow: int | None = None) -> AsyncEngine:
    """An engine of ``pool_size`` kept connections and ``max_overflow`` more (default: as many) opened when
    all are busy and closed as each comes back while the pool is full."""
    url, tls = tls_options(database_url)
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_recycle=1800,  # no pre-ping round trip per checkout: a dead connection fails once, as Unavailable
        hide_parameters=True,  # an error message quoting bound values would log request content
        connect_args={"server_settings": _SERVER_SETTINGS, **tls},
    )


# A plan per execution, made with the statement's own arrays: a generic plan of ``= ANY($1)`` is kept for the
# connection's life, and one made while a table was small (a fresh ledger, before autovacuum's first ANALYZE)
# seq-scanned processed_events with the batch's ids compared one by one, 30-100 ms per batch and growing with
# the table. A custom plan sees the array (hashed when scanned) and the table's size now; planning the batch's
# few statements costs well under a millisecond.
_SERVER_SETTINGS = {"application_name": "stocksync", "plan_cache_mode": "force_custom_plan"}


def ids_param(name: str) -> BindParameter:
    """A named ``text[]`` parameter, for statements built once and compared with ``= ANY(...)``."""
    return bindparam(name, type_=ARRAY(Text))


def any_of(values: Iterable[str]) -> BinaryExpression:
    """``= ANY(:array)``: one bind parameter for a list of ids, where ``IN`` binds (and compiles) one per id."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))


async def answers(engine: AsyncEngine) -> bool:
    """Whether the database runs a query now, through the engine's pool (so a pool with no free connection
    does not answer either): the readiness probe and the worker's test of a failing event both ask this."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return True
