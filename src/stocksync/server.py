"""`stocksync serve`: the HTTP API and the background parts, in one process or one role at a time."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from urllib.parse import SplitResult, urlsplit
from wsgiref.simple_server import WSGIServer

import structlog
import uvicorn
from nats.errors import Error as NatsError
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics, tracing
from stocksync.adapters.database import create_engine
from stocksync.aio import cancel_and_wait
from stocksync.http.protocol import uvicorn_config
from stocksync.messaging.nats_auth import AuthCallout, service_options
from stocksync.messaging.relay import OutboxRelay
from stocksync.messaging.webhooks import WebhookDeliverer
from stocksync.messaging.worker import EventWorker
from stocksync.service.ledger_service import GroupCommitLedger, LedgerService
from stocksync.service.sweeper import ExpirySweeper
from stocksync.settings import SERVICE_ROLES, Settings
from stocksync_client.connection import connect

log = structlog.get_logger("stocksync.server")


def nats_probe(nats_url: str) -> Callable[[], Awaitable[bool]]:
    """Readiness: some server of the cluster (any URL of the list) answers with its INFO line."""
    servers = [urlsplit(url.strip()) for url in nats_url.split(",") if url.strip()]

    async def answers(parts: SplitResult) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), timeout=1
            )
        except (OSError, TimeoutError, ValueError):
            return False
        try:
            return (await asyncio.wait_for(reader.readline(), timeout=1)).startswith(b"INFO")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def probe() -> bool:
        return any(await asyncio.gather(*map(answers, servers)))

    return probe


def _http_server(settings: Settings, engine: AsyncEngine, roles: Iterable[str]) -> uvicorn.Server:
    from stocksync.http.app import create_app
    from stocksync.messaging.feed import LiveFeed

    readiness = {"nats": nats_probe(settings.nats_url)} if settings.nats_url else {}
    feed = None
    if settings.nats_url:  # the live feed's one subscription for this process's clients
        options = service_options(settings)
        stall_s = 2 * settings.stream_heartbeat_s  # a client stuck that long on a send does not read
        feed = LiveFeed(settings.nats_url, queue_max=settings.stream_queue_max, stall_s=stall_s, **options)
    app = create_app(
        engine=engine,
        ledger=GroupCommitLedger(engine),
        readiness=readiness,
        roles=sorted(roles),
        feed=feed,
        heartbeat_s=settings.stream_heartbeat_s,
    )
    config = uvicorn_config(app, settings.http_host, settings.http_port, lifespan="on")
    return uvicorn.Server(config)


def shared_port(host: str, port: int) -> socket.socket:
    """The API's listening socket with ``SO_REUSEPORT``: several API processes (one per core: one Python
    process uses one) may serve one port, and the kernel spreads the connections among them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listening.bind((host, port))
    listening.listen(2048)
    return listening


async def serve(settings: Settings, roles: Iterable[str] = SERVICE_ROLES) -> None:
    """Run the chosen roles until SIGINT or SIGTERM, then stop them cleanly."""
    roles = set(roles)
    if not settings.nats_auth_issuer_seed:  # an open NATS (no access configured): no callout to run
        roles.discard("auth")
    assert settings.database_url is not None
    tracing.configure(settings.tracing, ",".join(sorted(roles)))
    # No overflow: under an open load past what the process can serve, requests beyond 20 at the database
    # opened connections only to close them again (a new PostgreSQL backend each), which cost more CPU than
    # the reads and turned a short queue into a collapse (benchmarks/profiling.md); now they wait their turn.
    engine = create_engine(settings.database_url, pool_size=20, max_overflow=0)
    ledger = LedgerService(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task] = []
    http = None
    scraped = _metrics_listener(settings, roles)
    if "api" in roles:
        http = _http_server(settings, engine, roles)
        http.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        listening = shared_port(settings.http_host, settings.http_port)
        tasks.append(asyncio.create_task(http.serve(sockets=[listening]), name="api"))
    if "sweeper" in roles:
        sweeper = ExpirySweeper(engine, ledger, interval_s=settings.sweep_interval_s)
        tasks.append(asyncio.create_task(sweeper.run(stop), name="sweeper"))
    if roles & {"worker", "relay", "auth", "webhooks"}:
        tasks.append(asyncio.create_task(_nats_roles(settings, roles, engine, ledger, stop), name="nats"))
    gc.collect()
    gc.freeze()  # what start-up built lives for ever: keep full collections from walking it (latency spikes)
    log.info(
        "serving",
        roles=sorted(roles),
        http=f"http://{settings.http_host}:{settings.http_port}",
        nats=settings.nats_url,  # clients connect with their API key as the token
    )
    try:
        done, _ = await asyncio.wait(
            [asyncio.create_task(stop.wait()), *tasks], return_when="FIRST_COMPLETED"
        )
        for task in done:
            if task in tasks and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        if scraped is not None:  # first, and without awaiting: a cancelled shutdown must not keep the port
            scraped.shutdown()
            scraped.server_close()
        stop.set()
        if http is not None:
            http.should_exit = True
        if tasks:
            await asyncio.wait(tasks, timeout=15)
            for task in tasks:  # ended, or still waiting for a server that never came: give up
                await cancel_and_wait(task)
        await engine.dispose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("stopped")


class CannotListen(Exception):
    """A port this process must serve on is taken (or not allowed): said in one line, not a traceback."""


def _metrics_listener(settings: Settings, roles: set[str]) -> WSGIServer | None:
    """Every process is scraped (docs/operations.md, "Metrics"): on its own metrics port when one is set or
    it has no API, else on the API port's ``/metrics`` (None here)."""
    for role in roles:
        metrics.ROLES.labels(role).set(1)
    port = settings.metrics_port
    if port is None and "api" in roles:
        return None
    port = metrics.DEFAULT_PORT if port is None else port
    try:
        server, _ = metrics.serve_metrics(settings.http_host, port)
    except OSError as error:
        raise CannotListen(
            f"cannot serve /metrics on {settings.http_host}:{port} ({error.strerror}); give each process on"
            " this machine its own STOCKSYNC_METRICS_PORT"
        ) from None
    return server


async def _nats_roles(
    settings: Settings, roles: set[str], engine: AsyncEngine, ledger: LedgerService, stop: asyncio.Event
) -> None:
    """The worker, the relay, the auth callout and the webhooks share one NATS connection (the service user's), made
    (patiently) before they start. The callout runs only where an issuer seed is configured."""
    nc = await connect(settings.nats_url, **service_options(settings))
    parts = []
    if "auth" in roles:
        parts.append(AuthCallout(nc, engine, settings).run(stop))
    if "worker" in roles:
        parts.append(EventWorker(nc, ledger, batch_max=settings.batch_max).run(stop))
    if "relay" in roles:
        parts.append(
            OutboxRelay(
                engine,
                nc,
                retention=timedelta(seconds=settings.outbox_retention_s),
                ack_timeout_s=settings.relay_ack_timeout_s,
            ).run(stop)
        )
    if "webhooks" in roles:
        give_up = timedelta(seconds=settings.webhook_give_up_s)
        deliverer = WebhookDeliverer(nc, engine, give_up_after=give_up, timeout_s=settings.webhook_timeout_s)
        parts.append(deliverer.run(stop))
    try:
        await asyncio.gather(*parts)
    finally:
        try:  # a NATS that went away for good must not hold the shutdown up
            await asyncio.wait_for(nc.drain(), timeout=5)
        except (TimeoutError, NatsError):
            await nc.close()
