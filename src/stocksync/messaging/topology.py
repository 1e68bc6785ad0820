"""Streams, the worker's durable consumer and the availability buckets, created or updated by `migrate`.

The buckets source their entries from STOCKSYNC_OUT (a subject transform puts each under its key), so the
relay publishes each entry once; the out stream keeps their "never older" rule (`adapters.bucket.NewestOnly`).

Durability choices are explained in docs/reliability.md: file storage everywhere, inbound messages kept for a
week so the nightly reconciliation can prove none was lost. Exactly-once *effect* comes from the ledger's
processed_events, for ever, not from JetStream's de-duplication: STOCKSYNC_IN's duplicate window is the
smallest nats-server accepts, because there the message id is chosen by the publisher and is stream-wide, so a
till of one store could otherwise claim, for two minutes, the event ids another store's tills will use.
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import APIError, NotFoundError

from stocksync.wire import (
    AVAILABILITY_BUCKET,
    BUCKET_SOURCES,
    CHANNEL_BUCKET,
    DLQ_ALL,
    DLQ_STREAM,
    IN_ALL,
    IN_STREAM,
    OUT_ALL,
    OUT_STREAM,
    WORKER_CONSUMER,
)

DAY = 86_400.0
DUPLICATE_WINDOW_S = 120.0  # where only stocksync writes the message ids (outbound, DLQ, KV)
# Inbound: nats-server refuses less than 100 ms, and takes 0 for its default of two minutes.
IN_DUPLICATE_WINDOW_S = 0.1


def streams(replicas: int = 1) -> list[StreamConfig]:
    common = dict(
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        max_msg_size=512 * 1024,
    )
    return [
        StreamConfig(
            name=IN_STREAM,
            subjects=[IN_ALL],
            max_age=7 * DAY,
            description="events from tills, the web shop and staff",
            duplicate_window=IN_DUPLICATE_WINDOW_S,
            **common,
        ),
        StreamConfig(
            name=OUT_STREAM,
            subjects=[OUT_ALL],
            max_age=3 * DAY,
            description="availability, reservations, alerts and outcomes",
            duplicate_window=DUPLICATE_WINDOW_S,
            **common,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_ALL],
            max_age=30 * DAY,
            description="messages that could not be decoded or validated",
            duplicate_window=DUPLICATE_WINDOW_S,
            **common,
        ),
    ]


def availability_bucket(replicas: int = 1) -> StreamConfig:
    """The stream behind the KV bucket, as ``create_key_value`` makes it (history 1), sourcing the positions'
    availability from STOCKSYNC_OUT; migrate updates it."""
    return _bucket(AVAILABILITY_BUCKET, "<location_id>.<sku>", replicas)


def channel_bucket(replicas: int = 1) -> StreamConfig:
    """What each channel may sell per sku (spec section 7), sourced like the positions'."""
    return _bucket(CHANNEL_BUCKET, "<channel_id>.<sku>", replicas)


def bucket_source(bucket: str, start_seq: int | None = None) -> StreamSource:
    """The out stream's entries for ``bucket``, each under the bucket's subject for its key; from
    ``start_seq`` on (None: the out stream's first message)."""
    source, _, prefix = BUCKET_SOURCES[bucket]
    transform = SubjectTransform(src=source, dest=prefix + "{{wildcard(1)}}.{{wildcard(2)}}")
    return StreamSource(name=OUT_STREAM, opt_start_seq=start_seq, subject_transforms=[transform])


def _bucket(bucket: str, key: str, replicas: int) -> StreamConfig:
    _, stream, subject = BUCKET_SOURCES[bucket]
    return StreamConfig(
        name=stream,
        subjects=[f"{subject}>"],  # still written directly by reconcile's repairs
        sources=[bucket_source(bucket)],
        description=f"current availability per {key}",
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        deny_delete=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        allow_direct=False,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=0.0,
        max_bytes=-1,
        max_msgs=-1,
        max_msg_size=-1,
        max_consumers=-1,
    )


def worker_consumer() -> ConsumerConfig:
    """Explicit acks after the commit; redelivered without limit, so a passing fault never drops an event."""
    return ConsumerConfig(
        durable_name=WORKER_CONSUMER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60.0,
        max_deliver=-1,
        max_ack_pending=20_000,
        max_waiting=512,
        filter_subject=IN_ALL,
    )


async def ensure_topology(js: JetStreamContext, replicas: int = 1) -> None:
    """Create what is missing and update settings that changed; safe to repeat."""
    for config in streams(replicas):
        await _ensure_stream(js, config)
    await _ensure_stream(js, availability_bucket(replicas), AVAILABILITY_BUCKET)
    await _ensure_stream(js, channel_bucket(replicas), CHANNEL_BUCKET)
    await js.add_consumer(IN_STREAM, worker_consumer())


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, bucket: str | None = None) -> None:
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    if bucket is not None:
        config.sources = await _sources_kept(js, bucket, info.config.sources or [])
    await js.update_stream(config)


async def _sources_kept(js: JetStreamContext, bucket: str, sources: list[StreamSource]) -> list[StreamSource]:
    """A bucket's source as it is when it has one (run again: where it started stays). A bucket written by
    the relays directly until now (before sourcing) starts after the out stream's last message: what it holds
    is at least as new as everything published before, and replaying that over it would go back in time."""
    kept = [s for s in sources if s.name == OUT_STREAM]
    if kept:
        return kept
    out = await js.stream_info(OUT_STREAM)
    return [bucket_source(bucket, out.state.last_seq + 1)]


async def _raised_anyway(error: Exception) -> None:
    """nats-py's default error callback logs every failed attempt with a traceback; the last one is raised."""


async def migrate_topology(url: str, replicas: int = 1, *, settle_s: float = 60.0, **options) -> None:
    """``options``: the service's credentials and TLS (`nats_auth.service_options`). A cluster still forming
    (`forming`) is waited for up to ``settle_s``; then its last answer is raised."""
    nc = await nats.connect(
        servers=url.split(","),
        connect_timeout=5,
        max_reconnect_attempts=3,
        error_cb=_raised_anyway,
        **options,
    )
    deadline, delay = time.monotonic() + settle_s, 0.25
    try:
        while True:
            try:
                await ensure_topology(nc.jetstream(), replicas)
                return
            except (APIError, NatsTimeoutError, NoRespondersError) as error:
                if not forming(error) or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    finally:
        await nc.close()


# What a JetStream cluster answers while it forms: no meta leader yet (no answer, or "temporarily
# unavailable"), a peer not yet known to be online ("no suitable peers for placement"), too few peers yet for
# the replicas ("insufficient resources"). Compose starts migrate once every node answers /healthz, which can
# be before they agree on their peers.
_FORMING_CODES = frozenset({10005, 10008, 10023})


def forming(error: Exception) -> bool:
    if isinstance(error, APIError):
        return error.err_code in _FORMING_CODES or error.code == 503
    return True  # no answer in time, or no responder yet
