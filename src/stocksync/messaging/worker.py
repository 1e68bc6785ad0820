"""The event worker: pulls inbound events in batches and applies each batch in one transaction.

Acknowledges only after the commit. A message that cannot be decoded or validated goes to the DLQ and is
acknowledged, so it never blocks the ones behind it. A passing fault (database down) leaves the batch
unacknowledged and is retried with backoff; a batch that fails for one bad event is split until the others
apply, and the bad one is dead-lettered once it keeps failing while the database answers. Nothing one message
carries, and no error of ours while handling it, ends the worker. Several workers may share the durable consumer.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from stocksync import metrics, tracing
from stocksync.aio import cancel_and_wait, pause, quietly
from stocksync.domain.errors import Unavailable
from stocksync.domain.events import (
    InboundEvent,
    OrderAction,
    OrderRequest,
    decode_inbound,
)
from stocksync.messaging.orders import OrderHandler, decode_order
from stocksync.messaging.pull import Pull
from stocksync.messaging.refusals import Refused, decoded
from stocksync.service.ledger_service import LedgerService
from stocksync.service.orders import OrderService
from stocksync.wire import (
    IN_STREAM,
    MSG_ID,
    WORKER_CONSUMER,
    DeadLetter,
    dlq_msg_id,
    dlq_subject,
    header_event_id,
    inbound_parts,
    inbound_subject,
    is_order_subject,
    subject_location,
)

log = structlog.get_logger("stocksync.worker")
_encoder = msgspec.json.Encoder()

# The DLQ stream takes 512 KiB a message, NATS headers included: a letter stays well below, whatever it copies.
LETTER_MAX_BYTES = 448 * 1024
MAX_HEADERS, HEADER_MAX_CHARS, DETAIL_MAX_CHARS = 32, 256, 2048
ISOLATED_RETRIES = 3  # tries of one failing event, each after the database answered, before its dead letter


def decode_message(subject: str, headers: dict[str, str] | None, data: bytes) -> InboundEvent:
    """Body and subject must agree: ``stocksync.in.<location_id>.<type>``, and ``Nats-Msg-Id`` = event_id."""
    event = decoded(decode_inbound, data, "invalid_event")
    if inbound_parts(subject) != (event.location_id, event.type):
        raise Refused(
            "subject_mismatch",
            f"subject {subject!r} does not match the body ({inbound_subject(event.location_id, event.type)})",
        )
    msg_id = header_event_id(headers)
    if msg_id is not None and msg_id != event.event_id:
        raise Refused("msg_id_mismatch", f"Nats-Msg-Id {msg_id!r} is not the event_id {event.event_id!r}")
    return event


def _refusal_of(msg: Msg) -> InboundEvent | tuple[str, OrderRequest | OrderAction] | Refused:
    """The event (or the order's action and body), or why it is refused: an error of ours while decoding
    refuses that message alone."""
    try:
        if is_order_subject(msg.subject):
            return decode_order(msg.subject, msg.data)
        return decode_message(msg.subject, msg.headers, msg.data)
    except Refused as refusal:
        return refusal
    except Exception as error:
        return Refused("decode_failed", f"{type(error).__name__}: {error}")


def dead_letter_of(msg: Msg, refusal: Refused) -> tuple[str, DeadLetter]:
    """The letter for ``msg``, at most `LETTER_MAX_BYTES` encoded: headers and detail are capped, and the body
    copy is cut to what room is left (the original stays in the inbound stream, at ``stream_sequence``)."""
    headers, headers_cut = _capped_headers(msg.headers or {})
    detail = _cut(refusal.detail, DETAIL_MAX_CHARS)
    try:
        msg.data.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "base64"
    letter = DeadLetter(
        subject=msg.subject,
        headers=headers,
        body="",
        body_encoding=encoding,
        error=refusal.error,
        detail=detail,
        stream_sequence=_sequence(msg),
        dead_lettered_at=datetime.now(UTC),
        body_bytes=len(msg.data),
        headers_truncated=headers_cut,
    )
    room = LETTER_MAX_BYTES - len(_encoder.encode(letter))
    body, kept = _body_copy(msg.data, encoding, room)
    letter = msgspec.structs.replace(letter, body=body, body_truncated=kept < len(msg.data))
    return dlq_subject(subject_location(msg.subject)), letter


def _body_copy(data: bytes, encoding: str, room: int) -> tuple[str, int]:
    """The longest prefix of ``data`` (found in a few steps) whose JSON string takes at most ``room`` more
    bytes than ``""``; and how many bytes of ``data`` it holds. JSON escapes a control byte as six."""
    kept = len(data)
    while True:
        prefix = data[:kept]
        text = prefix.decode("utf-8", "ignore") if encoding == "utf-8" else base64.b64encode(prefix).decode()
        size = len(_encoder.encode(text)) - 2
        if size <= room:
            return text, len(text.encode()) if encoding == "utf-8" else kept
        kept = min(kept - 1, kept * room // size)


def _capped_headers(headers: dict[str, str]) -> tuple[dict[str, str], bool]:
    kept = {
        _cut(name, HEADER_MAX_CHARS): _cut(value, HEADER_MAX_CHARS)
        for name, value in list(headers.items())[:MAX_HEADERS]
    }
    cut = len(headers) > MAX_HEADERS or any(
        len(name) > HEADER_MAX_CHARS or len(value) > HEADER_MAX_CHARS for name, value in headers.items()
    )
    return kept, cut


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sequence(msg: Msg) -> int | None:
    try:
        return msg.metadata.sequence.stream
    except (ValueError, AttributeError, IndexError, NatsError):  # no JetStream metadata
        return None


class EventWorker:
    def __init__(
        self,
        nc: Client,
        ledger: LedgerService,
        *,
        orders: OrderService | None = None,
        batch_max: int = 500,
        fetch_timeout_s: float = 1.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.ledger = ledger
        self.orders = OrderHandler(self.js, orders or OrderService(ledger.store.engine, ledger))
        self.batch_max = batch_max
        self.fetch_timeout_s = fetch_timeout_s
        self.max_backoff_s = max_backoff_s

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and apply until stopped, the consumer lag sampled beside."""
        sampling = asyncio.create_task(metrics.sample_every(stop, "consumer", self.sample_lag))
        try:
            await self._fetch_until_stopped(stop)
        finally:
            await cancel_and_wait(sampling)

    async def _fetch_until_stopped(self, stop: asyncio.Event) -> None:
        """Pull and apply; pull anew after any NATS error.

        No idle heartbeat: a pull request lost without a status (a reconnect, a NATS restart, a consumer
        leader gone) is asked again at its expiry, ``fetch_timeout_s`` (`stocksync.messaging.pull`).
        """
        backoff = 0.1
        while not stop.is_set():
            try:
                async with Pull(self.nc, IN_STREAM, WORKER_CONSUMER, self.batch_max) as pull:
                    while not stop.is_set():
                        if msgs := await pull.fetch(self.fetch_timeout_s):
                            metrics.BATCH_WAIT_SECONDS.observe(pull.waited)
                            await self._handle_safely(msgs, stop, backoff)
                            backoff = 0.1
            except (NatsError, OSError) as error:
                log.warning("worker_subscription_lost", error=f"{type(error).__name__}: {error}")
                await pause(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def sample_lag(self) -> None:
        """Consumer lag as JetStream counts it: not yet delivered, and delivered but not acknowledged (the
        consumer is shared: every worker reports the same numbers)."""
        info = await self.js.consumer_info(IN_STREAM, WORKER_CONSUMER, timeout=self.fetch_timeout_s)
        metrics.CONSUMER_PENDING.labels(WORKER_CONSUMER).set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.labels(WORKER_CONSUMER).set(info.num_ack_pending or 0)

    async def _handle_safely(self, msgs: Sequence[Msg], stop: asyncio.Event, backoff: float) -> None:
        """`handle`, and an error of ours there ends only this batch: what it left unacknowledged comes back
        (after ``backoff``), and the worker goes on with the next."""
        try:
            await self.handle(msgs, stop)
        except (NatsError, OSError):
            raise
        except Exception as error:
            # the type only: an exception's message may quote a body
            log.error("batch_failed", events=len(msgs), error=type(error).__name__)
            await asyncio.gather(*(quietly(msg.nak(delay=backoff)) for msg in msgs if not msg.is_acked))
            await pause(stop, backoff)

    async def handle(self, msgs: Sequence[Msg], stop: asyncio.Event | None = None) -> None:
        """Dead-letter the invalid, apply the events as one batch and the orders one by one, then
        acknowledge everything."""
        valid: list[tuple[Msg, InboundEvent]] = []
        orders: list[tuple[Msg, str, OrderRequest | OrderAction]] = []
        for msg in msgs:
            decoded = _refusal_of(msg)
            if isinstance(decoded, Refused):
                await self._dead_letter_or_retry(msg, decoded)
            elif isinstance(decoded, tuple):
                orders.append((msg, *decoded))
            else:
                valid.append((msg, decoded))
        stop = stop or asyncio.Event()
        carried = [c for msg, _ in valid if (c := tracing.parent_of(msg.headers)) is not None]
        with tracing.span(
            "worker.batch", parent=carried[0] if carried else None, links=carried[1:], events=len(valid)
        ):
            await self._apply_until_committed(valid, stop)
        for order in orders:
            await self._order_until_committed(*order, stop)

    async def _order_until_committed(
        self, msg: Msg, action: str, body: OrderRequest | OrderAction, stop: asyncio.Event
    ) -> None:
        backoff = 0.05
        while not stop.is_set():
            try:
                await self.orders.handle(msg, action, body)
                return
            except Unavailable as error:
                log.warning("order_deferred", error=str(error), retry_in_s=backoff)
                await quietly(msg.in_progress())
                await pause(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _apply_until_committed(
        self, batch: list[tuple[Msg, InboundEvent]], stop: asyncio.Event
    ) -> None:
        backoff = 0.05
        while batch and not stop.is_set():
            try:
                await self._apply_or_split(batch)
                return
            except Unavailable as error:
                batch = [(msg, event) for msg, event in batch if not msg.is_acked]  # split halves done
                log.warning("batch_deferred", events=len(batch), error=str(error), retry_in_s=backoff)
                await asyncio.gather(*(quietly(msg.in_progress()) for msg, _ in batch))
                await pause(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _apply_or_split(self, batch: list[tuple[Msg, InboundEvent]]) -> None:
        try:
            await self.ledger.apply([event for _, event in batch])
        except Unavailable:
            raise
        except Exception as error:  # one event the ledger cannot store: isolate it, keep the rest
            if len(batch) == 1:
                await self._apply_alone(*batch[0], error)
                return
            half = len(batch) // 2
            await self._apply_or_split(batch[:half])
            await self._apply_or_split(batch[half:])
            return
        for msg, _ in batch:  # each ack only queues a publish: a plain loop beats gathering 500 coroutines
            await msg.ack()

    async def _apply_alone(self, msg: Msg, event: InboundEvent, error: Exception) -> None:
        """One event that failed alone is dead-lettered only when it fails again while the database answers:
        a passing fault in an exception type nobody classified must never dead-letter and acknowledge it."""
        for attempt in range(ISOLATED_RETRIES):
            if not await self.ledger.database_answers():
                raise Unavailable(f"the database does not answer after {type(error).__name__}") from error
            try:
                await self.ledger.apply([event])
            except Unavailable:
                raise
            except Exception as again:
                error = again
                await asyncio.sleep(0.05 * 2**attempt)
            else:
                await msg.ack()
                return
        log.error("event_failed", event_id=event.event_id, error=type(error).__name__)
        await self._dead_letter_or_retry(msg, Refused("apply_failed", f"{type(error).__name__}: {error}"))

    async def _dead_letter_or_retry(self, msg: Msg, refusal: Refused) -> None:
        """A letter that cannot be written now leaves its message for a redelivery, and holds up no other."""
        try:
            await self.dead_letter(msg, refusal)
        except Exception as error:
            log.warning("dead_letter_failed", subject=msg.subject, error=f"{type(error).__name__}: {error}")
            await quietly(msg.nak(delay=1.0))

    async def dead_letter(self, msg: Msg, refusal: Refused) -> None:
        """Publish to the DLQ (de-duplicated by the inbound sequence), then acknowledge the original."""
        subject, letter = dead_letter_of(msg, refusal)
        msg_id = dlq_msg_id(letter.stream_sequence) if letter.stream_sequence is not None else None
        await self.js.publish(subject, _encoder.encode(letter), headers={MSG_ID: msg_id} if msg_id else None)
        await msg.ack()
        metrics.DEAD_LETTERS.labels(refusal.error).inc()
        # The letter's detail may quote the body (an unknown field's name, a mismatched id): not logged.
        sequence = letter.stream_sequence
        log.warning("dead_lettered", subject=msg.subject, error=refusal.error, sequence=sequence)
