"""Webhooks and their delivery log as rows."""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import Struct
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from stocksync.adapters import tables as t
from stocksync.domain.webhooks import Webhook


class Delivery(Struct, frozen=True, kw_only=True):
    """What became of one message for one webhook: delivered (a 2xx) or given up, after how many attempts."""

    webhook_id: str
    subject: str
    msg_id: str | None
    stream_sequence: int
    outcome: str
    attempts: int
    last_status: int | None
    last_error: str | None
    first_attempt_at: datetime
    finished_at: datetime


_HOOK = [t.webhooks.c[name] for name in Webhook.__struct_fields__]
_DELIVERY = [t.webhook_deliveries.c[name] for name in Delivery.__struct_fields__]


def _hook(row) -> Webhook:
    return Webhook(webhook_id=row.webhook_id, url=row.url, subjects=tuple(row.subjects), secret=row.secret)


async def put_webhook(engine: AsyncEngine, webhook: Webhook) -> None:
    statement = insert(t.webhooks).values(
        webhook_id=webhook.webhook_id, url=webhook.url, subjects=list(webhook.subjects), secret=webhook.secret
    )
    statement = statement.on_conflict_do_update(
        index_elements=[t.webhooks.c.webhook_id],
        set_={
            "url": statement.excluded.url,
            "subjects": statement.excluded.subjects,
            "secret": statement.excluded.secret,
            "updated_at": func.now(),
        },
    )
    async with engine.begin() as conn:
        await conn.execute(statement)


async def delete_webhook(engine: AsyncEngine, webhook_id: str) -> bool:
    async with engine.begin() as conn:
        deleted = await conn.execute(t.webhooks.delete().where(t.webhooks.c.webhook_id == webhook_id))
        return deleted.rowcount > 0


async def webhooks(engine: AsyncEngine, webhook_id: str | None = None) -> list[Webhook]:
    query = select(*_HOOK).order_by(t.webhooks.c.webhook_id)
    if webhook_id is not None:
        query = query.where(t.webhooks.c.webhook_id == webhook_id)
    async with engine.connect() as conn:
        return [_hook(row) for row in await conn.execute(query)]


async def log_delivery(engine: AsyncEngine, delivery: Delivery) -> None:
    async with engine.begin() as conn:
        await conn.execute(t.webhook_deliveries.insert(), [msgspec.structs.asdict(delivery)])


async def deliveries(engine: AsyncEngine, webhook_id: str, limit: int) -> list[Delivery]:
    """The newest first."""
    d = t.webhook_deliveries.c
    query = select(*_DELIVERY).where(d.webhook_id == webhook_id).order_by(d.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [Delivery(**row._asdict()) for row in await conn.execute(query)]
