"""`stocksync migrate`: the database schema by Alembic, safe to repeat and to run from several processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from stocksync.adapters.database import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x5707C5  # advisory lock: two migrators never interleave


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")


async def migrate_database_async(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()


def migrate_database(database_url: str) -> None:
    asyncio.run(migrate_database_async(database_url))
