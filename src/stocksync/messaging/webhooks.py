"""Webhook deliveries: out-stream messages POSTed, signed, to the URL of each webhook, in order, retried.

Each webhook has a durable consumer of ``STOCKSYNC_OUT`` of its own (``stocksync-webhook-<id>``, filtered by its
subjects, from the moment it was defined) with one message in flight at a time: a webhook gets its messages in
stream order, so every position's in version order, and a receiver that is down holds up only its own
webhook. A message is retried with backoff (`domain.webhooks.retry_delay`) until a 2xx, or logged ``gave_up``
after the configured time and passed; either way it is logged, then acknowledged. A process that dies between
a delivery and its acknowledgement delivers it again (at least once: receivers drop repeats by
``Stocksync-Message-Id``). Several processes may run the role: the consumer hands each message to one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync import metrics
from stocksync.adapters.webhooks import Delivery, log_delivery, webhooks
from stocksync.aio import cancel_and_wait, pause, quietly
from stocksync.clock import Clock, utc_now
from stocksync.domain.webhooks import SIGNATURE_HEADER, Webhook, gave_up, retry_delay, signature
from stocksync.wire import MSG_ID, OUT_STREAM

log = structlog.get_logger("stocksync.webhooks")
CONSUMER_PREFIX = "stocksync-webhook-"
_PASSING = (SQLAlchemyError, OSError, NatsError, TimeoutError)


def consumer_config(hook: Webhook) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER_PREFIX + hook.webhook_id,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60.0,  # kept alive with in_progress while a delivery is retried
        max_deliver=-1,
        max_ack_pending=1,  # one in flight: the webhook's order is the stream's
        filter_subjects=list(hook.subjects),
    )


class WebhookDeliverer:
    def __init__(
        self,
        nc: Client,
        engine: AsyncEngine,
        *,
        give_up_after: timedelta,
        timeout_s: float = 5.0,
        refresh_s: float = 2.0,
        clock: Clock = utc_now,
    ) -> None:
        self.js = nc.jetstream()
        self.engine = engine
        self.give_up_after = give_up_after
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every webhook the table holds; follow its changes every ``refresh_s``."""
        serving: dict[str, tuple[Webhook, asyncio.Task]] = {}
        async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as http:
            try:
                while not stop.is_set():
                    try:
                        await self._follow(
                            serving, {h.webhook_id: h for h in await webhooks(self.engine)}, http, stop
                        )
                    except _PASSING as error:
                        log.warning("webhooks_unavailable", error=f"{type(error).__name__}: {error}")
                    await pause(stop, self.refresh_s)
            finally:
                for _, task in serving.values():
                    await cancel_and_wait(task)

    async def _follow(
        self,
        serving: dict[str, tuple[Webhook, asyncio.Task]],
        wanted: dict[str, Webhook],
        http: httpx.AsyncClient,
        stop: asyncio.Event,
    ) -> None:
        for webhook_id, (hook, task) in list(serving.items()):
            if wanted.get(webhook_id) != hook or task.done():
                await cancel_and_wait(task)
                del serving[webhook_id]
                if webhook_id not in wanted:
                    await quietly(self.js.delete_consumer(OUT_STREAM, CONSUMER_PREFIX + webhook_id))
        for webhook_id, hook in wanted.items():
            if webhook_id not in serving:
                task = asyncio.create_task(self._serve(hook, http, stop), name=f"webhook-{webhook_id}")
                serving[webhook_id] = (hook, task)

    async def _serve(self, hook: Webhook, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._ensure_consumer(hook)
                sub = await self.js.pull_subscribe_bind(CONSUMER_PREFIX + hook.webhook_id, OUT_STREAM)
                try:
                    while not stop.is_set():
                        try:
                            (msg,) = await sub.fetch(1, timeout=1.0)
                        except TimeoutError:
                            continue
                        await self._deliver(hook, msg, http, stop)
                finally:
                    await quietly(sub.unsubscribe())
            except _PASSING as error:
                log.warning(
                    "webhook_interrupted", webhook_id=hook.webhook_id, error=f"{type(error).__name__}"
                )
                await pause(stop, 1.0)

    async def _ensure_consumer(self, hook: Webhook) -> None:
        """The webhook's consumer, made anew (from now) when its subjects changed."""
        config = consumer_config(hook)
        try:
            info = await self.js.consumer_info(OUT_STREAM, config.durable_name)
        except NotFoundError:
            await self.js.add_consumer(OUT_STREAM, config)
            return
        if sorted(info.config.filter_subjects or [info.config.filter_subject or ""]) != sorted(hook.subjects):
            await self.js.delete_consumer(OUT_STREAM, config.durable_name)
            await self.js.add_consumer(OUT_STREAM, config)

    async def _deliver(self, hook: Webhook, msg: Msg, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Until a 2xx or the give-up time; a stop leaves the message unacknowledged for later."""
        first, attempts = self.clock(), 0
        status: int | None = None
        error: str | None = None
        while True:
            attempts += 1
            status, error = await self._post(hook, msg, attempts, http)
            if status is not None and 200 <= status < 300:
                outcome = "delivered"
                break
            if gave_up(first, self.clock(), self.give_up_after):
                outcome = "gave_up"
                break
            await quietly(msg.in_progress())
            await pause(stop, retry_delay(attempts))
            if stop.is_set():
                return
        delivery = Delivery(
            webhook_id=hook.webhook_id,
            subject=msg.subject,
            msg_id=(msg.headers or {}).get(MSG_ID),
            stream_sequence=msg.metadata.sequence.stream,
            outcome=outcome,
            attempts=attempts,
            last_status=status,
            last_error=error,
            first_attempt_at=first,
            finished_at=self.clock(),
        )
        await log_delivery(self.engine, delivery)
        await msg.ack()
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        if outcome == "gave_up":
            log.warning("webhook_gave_up", webhook_id=hook.webhook_id, subject=msg.subject, attempts=attempts)

    async def _post(
        self, hook: Webhook, msg: Msg, attempt: int, http: httpx.AsyncClient
    ) -> tuple[int | None, str | None]:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(hook.secret, int(time.time()), msg.data),
            "Stocksync-Subject": msg.subject,
            "Stocksync-Message-Id": (msg.headers or {}).get(MSG_ID, f"seq:{msg.metadata.sequence.stream}"),
            "Stocksync-Attempt": str(attempt),
        }
        try:
            answer = await http.post(hook.url, content=msg.data, headers=headers)
        # InvalidURL is no HTTPError: a hook stored before PUT checked its URL fails each attempt, nothing more
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return None, f"{type(error).__name__}: {error}"[:500]
        return answer.status_code, None if answer.is_success else f"HTTP {answer.status_code}"
