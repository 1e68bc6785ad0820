"""Prometheus metrics, one registry per process, served by every process whatever its roles.

Each process is its own scrape target (docs/operations.md, "Metrics"): a port per process rather than a
multiprocess registry, so a stuck worker shows as that worker, ``up`` is per process, and Prometheus sums
across processes. Counters and histograms are updated where the work is done (per batch, not per row);
gauges that need a query (outbox backlog, consumer lag, reservations) are sampled every `SAMPLE_S` by the
role that owns them, never on a scrape.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from stocksync.aio import pause

log = structlog.get_logger("stocksync.metrics")

SAMPLE_S = 5.0  # a third of Prometheus' default scrape interval
DEFAULT_PORT = 9464  # a process without the API role, when STOCKSYNC_METRICS_PORT is unset

ROLES = Gauge("stocksync_roles", "1 for each role this process runs", ["role"])
HTTP_REQUESTS = Counter(
    "stocksync_http_requests_total",
    "HTTP requests answered, by route template (`unmatched` when no route), method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "stocksync_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HTTP_ERRORS = Counter("stocksync_http_errors_total", "HTTP error answers by code", ["code"])
EVENTS = Counter("stocksync_events_total", "Events recorded, by type and outcome", ["type", "outcome"])
POSITION_READ_GROUP = Histogram(
    "stocksync_position_read_group",
    "Position reads (GET /v1/availability at locations) answered by one statement: reads that arrive while one "
    "is in the database share the next",
    buckets=(1, 2, 5, 10, 25, 50, 100),
)
BATCH_SIZE = Histogram(
    "stocksync_batch_size", "Events per applied batch", buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
)
TRANSACTION_SECONDS = Histogram(
    "stocksync_transaction_seconds",
    "Latency of one batch transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# the stage histograms: from half a millisecond, where a batch transaction's own buckets start at one
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TRANSACTION_STAGE_SECONDS = Histogram(
    "stocksync_transaction_stage_seconds",
    "The parts of stocksync_transaction_seconds: load (begin, the locks and reads), apply (the core, and the "
    "held lines read when needed), write (the one statement), commit (the WAL flush)",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
BATCH_WAIT_SECONDS = Histogram(
    "stocksync_batch_wait_seconds",
    "Time from a batch's first message arriving at the worker to the batch being taken for its transaction",
    buckets=_STAGE_BUCKETS,
)
RETRIES = Counter("stocksync_batch_retries_total", "Batch transactions retried", ["reason"])
DEAD_LETTERS = Counter(
    "stocksync_dead_letters_total", "Inbound messages sent to the DLQ, by error code", ["error"]
)
CONSUMER_PENDING = Gauge(
    "stocksync_consumer_pending", "Inbound messages the worker consumer has not yet delivered", ["consumer"]
)
CONSUMER_ACK_PENDING = Gauge(
    "stocksync_consumer_ack_pending",
    "Inbound messages delivered to a worker and not yet acknowledged",
    ["consumer"],
)
RESERVATIONS = Gauge("stocksync_reservations", "Reservations by status", ["status"])
RESERVATIONS_EXPIRING = Gauge(
    "stocksync_reservations_expiring", "Held reservations whose expiry falls within the next minute"
)
RESERVATIONS_OVERDUE = Gauge(
    "stocksync_reservations_overdue", "Held reservations already past their expiry (the sweeper is behind)"
)
EXPIRED = Counter("stocksync_reservations_expired_total", "Reservations expired by the sweeper")
RELAYED = Counter(
    "stocksync_outbox_relayed_total", "Outbox messages published to NATS (a bundle row holds several)"
)
RELAY_STAGE_SECONDS = Histogram(
    "stocksync_relay_stage_seconds",
    "Time a relay pass spends in each stage: read (the pending rows), channels (their channel sums), expect "
    "(reading the last message of subjects first seen), publish (sent, and every acknowledgement in), mark",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
RELAY_WAKE_SECONDS = Histogram(
    "stocksync_relay_wake_seconds",
    "Time from the first NOTIFY after a pass started to the start of the pass that reads what it announced",
    buckets=_STAGE_BUCKETS,
)
OUTBOX_LAG = Gauge("stocksync_outbox_unrelayed", "Outbox messages committed and not yet relayed")
OUTBOX_OLDEST = Gauge(
    "stocksync_outbox_oldest_unrelayed_seconds", "Age of the oldest outbox row not yet relayed (0: none)"
)
RELAY_LEADING = Gauge("stocksync_relay_leading", "1 while this process's relay holds the leader lock")
WEBHOOK_DELIVERIES = Counter(
    "stocksync_webhook_deliveries_total", "Webhook deliveries finished, by outcome", ["outcome"]
)
BUCKET_MALFORMED = Counter(
    "stocksync_bucket_entries_malformed",
    "Availability bucket entries that were not an availability body, overwritten by the relay",
)
STREAM_CLIENTS = Gauge("stocksync_stream_clients", "Clients of GET /v1/stream connected to this process")
STREAM_DROPPED = Counter(
    "stocksync_stream_dropped_total", "Live-feed clients disconnected by the server, by reason", ["reason"]
)

NATS_AUTH = Counter(
    "stocksync_nats_auth_total", "NATS connections the auth callout answered, by outcome", ["outcome"]
)
SAMPLE_FAILURES = Counter(
    "stocksync_metrics_sample_failures_total",
    "Gauge samples that failed (the gauge kept its value)",
    ["gauge"],
)

# Series that exist from the start (at 0), so a rate() or an absent() alert has them before the first one.
for _reason in ("concurrent_write", "deadlock"):
    RETRIES.labels(_reason)
for _outcome in ("authorised", "refused", "failed"):
    NATS_AUTH.labels(_outcome)
for _stage in ("read", "channels", "expect", "publish", "mark"):
    RELAY_STAGE_SECONDS.labels(_stage)
for _stage in ("load", "apply", "write", "commit"):
    TRANSACTION_STAGE_SECONDS.labels(_stage)
for _gauge in ("outbox", "consumer", "reservations"):  # the names `sample_every` is given
    SAMPLE_FAILURES.labels(_gauge)


class Stages:
    """Consecutive stages of one piece of work, each observed into ``histogram`` under its ``stage`` label."""

    def __init__(self, histogram: Histogram, started: float | None = None) -> None:
        self.histogram = histogram
        self.at = time.perf_counter() if started is None else started

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.histogram.labels(stage).observe(now - self.at)
        self.at = now


def serve_metrics(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """``/metrics`` of this process on its own port, in a thread: a scrape never waits for the event loop.
    Port 0 takes any free port (the server's ``server_port`` says which)."""
    server, thread = start_http_server(port, addr=host)
    log.info("metrics_serving", url=f"http://{host}:{server.server_port}/metrics")
    return server, thread


async def sample_every(stop: asyncio.Event, name: str, sample: Callable[[], Awaitable[None]]) -> None:
    """Run ``sample`` now and then every `SAMPLE_S` until ``stop``; a failed sample is counted and logged,
    and never ends the role that samples."""
    while not stop.is_set():
        try:
            await sample()
        except Exception as error:  # a database or NATS away: the next sample tries again
            SAMPLE_FAILURES.labels(name).inc()
            log.warning("metrics_sample_failed", gauge=name, error=type(error).__name__)
        await pause(stop, SAMPLE_S)
