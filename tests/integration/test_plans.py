"""The plan cache as the ledger's connections use it: custom plans for the batch's reads (a generic plan
of ``= ANY($1)`` made while a table was small seq-scans it for good), generic ones again from the write on,
for the foreign-key checks it fires one per row, and only for that transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from stocksync.adapters.database import create_engine
from stocksync.adapters.ledger_store import PostgresLedgerStore

_MODE = text("SELECT current_setting('plan_cache_mode')")


class _RolledBack(Exception):
    pass


async def test_reads_plan_per_execution_and_the_write_gives_its_checks_cached_plans(migrated_database_url):
    engine = create_engine(migrated_database_url, pool_size=1)
    store = PostgresLedgerStore(engine)
    row = {"subject": "s", "msg_id": "plans-1", "payload": b"{}", "kv_key": None, "version": None}
    try:
        with pytest.raises(_RolledBack):
            async with store.transaction() as batch:
                assert await batch.conn.scalar(_MODE) == "force_custom_plan"
                await batch.write_outbox([row])
                assert await batch.conn.scalar(_MODE) == "auto"
                raise _RolledBack  # leave no outbox row behind
        async with engine.connect() as conn:  # the same pooled connection, a new transaction
            assert await conn.scalar(_MODE) == "force_custom_plan"
    finally:
        await engine.dispose()
