"""Prometheus metrics, one registry for the process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("stocksync_events_total", "Events recorded, by type and outcome", ["type", "outcome"])
BATCH_SIZE = Histogram(
    "stocksync_batch_size", "Events per applied batch", buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
)
TRANSACTION_SECONDS = Histogram(
    "stocksync_transaction_seconds",
    "Latency of one batch transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RETRIES = Counter("stocksync_batch_retries_total", "Batch transactions retried", ["reason"])
RESERVATIONS = Gauge("stocksync_reservations", "Reservations by status", ["status"])
EXPIRED = Counter("stocksync_reservations_expired_total", "Reservations expired by the sweeper")
HTTP_ERRORS = Counter("stocksync_http_errors_total", "HTTP error answers by code", ["code"])
DEAD_LETTERS = Counter(
    "stocksync_dead_letters_total", "Inbound messages sent to the DLQ, by error", ["error"]
)
RELAYED = Counter("stocksync_outbox_relayed_total", "Outbox rows published to NATS")
OUTBOX_LAG = Gauge(
    "stocksync_outbox_unrelayed",
    "Outbox rows the relay's last pass found unrelayed (at most one batch: a full batch means at least that)",
)
RELAY_LEADING = Gauge("stocksync_relay_leading", "1 while this process's relay holds the leader lock")
BUCKET_MALFORMED = Counter(
    "stocksync_bucket_entries_malformed",
    "Availability bucket entries that were not an availability body, overwritten by the relay",
)
STREAM_CLIENTS = Gauge("stocksync_stream_clients", "Clients of GET /v1/stream connected to this process")
STREAM_DROPPED = Counter(
    "stocksync_stream_dropped_total", "Live-feed clients disconnected by the server, by reason", ["reason"]
)
