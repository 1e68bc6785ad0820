"""The one place the HTTP app is put together: routes, services, authentication, errors and OpenAPI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import __version__
from stocksync.adapters.channels import ChannelReader
from stocksync.adapters.queries import Queries
from stocksync.clock import Clock, utc_now
from stocksync.domain.events import MAX_BODY_BYTES
from stocksync.http import errors, health, observe
from stocksync.http.auth import SECURITY, SECURITY_SCHEME, Access, ApiKeyMiddleware, provide_key
from stocksync.http.channels import ChannelController
from stocksync.http.events import EventController
from stocksync.http.locations import LocationController
from stocksync.http.orders import OrderController
from stocksync.http.reservations import ReservationController
from stocksync.http.staff import StaffPage
from stocksync.http.stock import StockController
from stocksync.http.stream import StreamController
from stocksync.http.tracing import trace_requests
from stocksync.http.webhooks import WebhookController
from stocksync.messaging.feed import LiveFeed
from stocksync.service.keys import KeyVerifier
from stocksync.service.ledger_service import LedgerService
from stocksync.service.orders import OrderService


def create_app(
    *,
    engine: AsyncEngine,
    ledger: LedgerService,
    readiness: Mapping[str, health.Probe] = {},
    clock: Clock = utc_now,
    roles: Sequence[str] = ("api",),
    key_verifier: KeyVerifier | None = None,
    feed: LiveFeed | None = None,
    heartbeat_s: float = 15.0,
) -> Litestar:
    """The API over ``engine`` and ``ledger``; ``readiness`` adds checks (``"nats"``) to the database's, and
    ``roles`` are the parts this process runs, which readiness reports on.

    The key verifier listens for revocations from the app's start-up to its shutdown (see `KeyVerifier`), and
    ``feed`` (NATS) feeds ``GET /v1/stream`` and so the staff page's live numbers (the stream answers 503
    without one).
    """
    queries = Queries(engine)
    verifier = key_verifier or KeyVerifier(engine)
    services: dict[str, Any] = {
        "engine": engine,
        "ledger": ledger,
        "queries": queries,
        "channels": ChannelReader(engine),
        "orders": OrderService(engine, ledger, clock=clock),
        "access": Access(queries),
        "clock": clock,
        "probes": {"database": health.database_probe(engine), **readiness},
        "roles": tuple(roles),
        "feed": feed,
        "heartbeat_s": heartbeat_s,
    }
    lifecycle = [verifier] + ([feed] if feed is not None else [])
    api = Router(
        "/v1",
        route_handlers=[
            StockController,
            ReservationController,
            EventController,
            LocationController,
            ChannelController,
            OrderController,
            WebhookController,
            StreamController,
        ],
        middleware=[ApiKeyMiddleware],
        dependencies={"key": Provide(provide_key, sync_to_thread=False)},
        security=[{SECURITY_SCHEME: []}],
    )
    app = Litestar(
        route_handlers=[api, health.live, health.ready, health.metrics, StaffPage, _STATIC],
        dependencies={name: _constant(value) for name, value in services.items()},
        exception_handlers={Exception: errors.handle},
        middleware=[trace_requests],
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"key_verifier": verifier}),
        on_startup=[part.start for part in lifecycle],
        on_shutdown=[part.stop for part in reversed(lifecycle)],
        template_config=TemplateConfig(directory=_HERE / "templates", engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(
            title="stocksync",
            version=__version__,
            path="/schema",
            components=Components(security_schemes=SECURITY),
        ),
        logging_config=None,
    )
    errors.document_errors(app)
    app.asgi_handler = observe.observed(app.asgi_handler)  # outside routing and error answers: sees all
    return app


_HERE = Path(__file__).parent
# The staff page's script and styles, vendored HTMX among them: no CDN, no front-end build.
_STATIC = create_static_files_router(
    path="/staff/static", directories=[_HERE / "static"], include_in_schema=False, name="staff-static"
)


def _constant(value: Any) -> Provide:
    return Provide(lambda: value, sync_to_thread=False, use_cache=True)


async def _resolve_in_turn(
    self: KwargsModel, connection: ASGIConnection, kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    """Litestar's dependency resolution, one dependency after the other.

    Litestar resolves the independent dependencies of a handler concurrently, in an anyio task group: five
    tasks for a reservation (key, ledger, queries, access, clock), a fifth of its API CPU in a profile. Every
    dependency here is a constant or the request's key, never a wait, so in turn gives the same values.
    """
    cleanup = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup)
    return cleanup


KwargsModel.resolve_dependencies = _resolve_in_turn  # type: ignore[method-assign]
