"""Liveness, readiness and metrics: no key needed, so orchestrators and Prometheus can reach them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.http.schemas import Health

Probe = Callable[[], Awaitable[bool]]
Probes = Mapping[str, Probe]
PROBE_TIMEOUT_S = 2.0

log = structlog.get_logger("stocksync.http")


def database_probe(engine: AsyncEngine) -> Probe:
    async def database() -> bool:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    return database


@get("/health/live", sync_to_thread=False)
def live() -> Health:
    """The process answers: nothing else is checked, so a slow dependency never gets it restarted."""
    return Health(status="ok", checks={})


@get("/health/ready", responses={503: ResponseSpec(Health, description="a dependency is down")})
async def ready(probes: NamedDependency[Probes]) -> Response[Health]:
    """200 when every dependency answers (database, NATS), else 503; the body lists each check."""
    names = list(probes)
    results = await asyncio.gather(*(_passes(name, probes[name]) for name in names))
    healthy = all(results)
    body = Health(status="ok" if healthy else "unavailable", checks=dict(zip(names, results, strict=True)))
    return Response(body, status_code=200 if healthy else 503)


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
