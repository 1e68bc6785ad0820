"""The api_keys table: a key's row by id, every key's public fields, and revocation with its NOTIFY.

Only the sha256 of a secret is stored; `service.keys` makes keys and verifies them.
"""

from __future__ import annotations

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stocksync.adapters import tables as t

REVOKED_CHANNEL = "stocksync_keys"  # NOTIFY payload: the key id revoked

_k = t.api_keys.c
PUBLIC = (_k.key_id, _k.role, _k.locations, _k.label, _k.created_at, _k.revoked_at)  # never the secret's hash


async def insert_key(
    conn: AsyncConnection,
    *,
    key_id: str,
    secret_hash: bytes,
    role: str,
    locations: list[str],
    label: str | None,
) -> None:
    await conn.execute(
        insert(t.api_keys).values(
            key_id=key_id, secret_hash=secret_hash, role=role, locations=locations, label=label
        )
    )


async def public_rows(conn: AsyncConnection) -> list[Row]:
    """Every key's public fields, oldest first."""
    return list(await conn.execute(select(*PUBLIC).order_by(_k.created_at, _k.key_id)))


async def lock_public_row(conn: AsyncConnection, key_id: str) -> Row | None:
    return (await conn.execute(select(*PUBLIC).where(_k.key_id == key_id).with_for_update())).first()


async def revoke(conn: AsyncConnection, key_id: str) -> Row:
    """Set ``revoked_at`` now and NOTIFY every API process (delivered at commit); the row as it is after."""
    revoked = update(t.api_keys).where(_k.key_id == key_id).values(revoked_at=func.now())
    row = (await conn.execute(revoked.returning(*PUBLIC))).one()
    await conn.execute(select(func.pg_notify(REVOKED_CHANNEL, key_id)))
    return row


async def live_key(conn: AsyncConnection, key_id: str) -> Row | None:
    """The secret's hash, role and locations of an unrevoked key."""
    query = select(_k.secret_hash, _k.role, _k.locations).where(_k.key_id == key_id, _k.revoked_at.is_(None))
    return (await conn.execute(query)).first()
