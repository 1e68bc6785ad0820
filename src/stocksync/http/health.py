"""Liveness, readiness and metrics: no key needed, so orchestrators and Prometheus can reach them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters.database import answers
from stocksync.http.schemas import Health

Probe = Callable[[], Awaitable[bool]]
Probes = Mapping[str, Probe]
PROBE_TIMEOUT_S = 2.0

log = structlog.get_logger("stocksync.http")


def database_probe(engine: AsyncEngine) -> Probe:
    return lambda: answers(engine)


@get("/health/live", sync_to_thread=False)
def live() -> Health:
    """The process answers: nothing else is checked, so a slow dependency never gets it restarted."""
    return Health(status="ok", checks={})


# What each part of a process needs to do its work. The API needs the database only: what it changes goes
# to the outbox in the same transaction, and the relay publishes it when NATS is back.
NEEDS: Mapping[str, tuple[str, ...]] = {
    "api": ("database",),
    "worker": ("database", "nats"),
    "relay": ("database", "nats"),
    "sweeper": ("database",),
    "auth": ("database", "nats"),  # the NATS auth callout
    "webhooks": ("database", "nats"),
}


@get("/health/ready", responses={503: ResponseSpec(Health, description="the database is unreachable")})
async def ready(probes: NamedDependency[Probes], roles: NamedDependency[Sequence[str]]) -> Response[Health]:
    """200 while the API can serve (the database answers), ``degraded`` when another check fails; 503
    ``unavailable`` when the database does not answer. ``serves``: which parts of this process can work."""
    names = list(probes)
    results = await asyncio.gather(*(_passes(name, probes[name]) for name in names))
    checks = dict(zip(names, results, strict=True))
    serves = {role: all(checks.get(need, True) for need in NEEDS[role]) for role in roles}
    status = "unavailable" if not checks["database"] else "ok" if all(results) else "degraded"
    body = Health(status=status, checks=checks, serves=serves)
    return Response(body, status_code=503 if status == "unavailable" else 200)


async def _passes(name: str, probe: Probe) -> bool:
    try:
        return bool(await asyncio.wait_for(probe(), PROBE_TIMEOUT_S))
    except Exception as error:  # a probe that fails in any way is a failing check, not a failing endpoint
        log.warning("readiness_check_failed", check=name, error=type(error).__name__)
        return False


@get("/metrics", media_type=CONTENT_TYPE_LATEST, sync_to_thread=False)
def metrics() -> bytes:
    """Prometheus text exposition of this process's registry."""
    return generate_latest()
