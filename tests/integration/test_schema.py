"""The schema Alembic makes is what `stocksync.adapters.tables` maps; migrating is safe to repeat and undo."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, text
from sqlalchemy.engine import Connection

from stocksync.adapters.database import create_engine
from stocksync.adapters.tables import metadata
from stocksync.migrate import alembic_config, migrate_database_async

TABLES = {
    "locations",
    "positions",
    "movements",
    "reservations",
    "reservation_lines",
    "processed_events",
    "api_keys",
    "outbox",
    "channels",
    "channel_locations",
    "orders",
    "webhooks",
    "webhook_deliveries",
}

SNAPSHOT = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity,
               identity_generation
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        ORDER BY 1""",
    "version": "SELECT version_num FROM alembic_version",
}


def differences(connection: Connection) -> list:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, metadata)


async def inspect(url: str, probe: Callable[[Connection], object]) -> object:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(probe)
    finally:
        await engine.dispose()


def snapshot(connection: Connection) -> dict[str, list[tuple]]:
    return {name: [tuple(row) for row in connection.execute(text(sql))] for name, sql in SNAPSHOT.items()}


def public_tables(connection: Connection) -> set[str]:
    rows = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    return {row.tablename for row in rows}


async def test_the_migrated_schema_is_what_the_table_mappings_say(migrated_database_url):
    assert await inspect(migrated_database_url, differences) == []
    assert TABLES <= await inspect(migrated_database_url, public_tables)  # type: ignore[operator]


def check_constraints(connection: Connection) -> set[tuple[str, str]]:
    rows = connection.execute(
        text(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint"
            " WHERE contype = 'c' AND connamespace = 'public'::regnamespace"
        )
    )
    return {tuple(row) for row in rows}  # type: ignore[misc]


async def test_the_check_constraints_are_the_mapped_ones(migrated_database_url):
    """compare_metadata does not look at CHECK constraints: compare their names here."""
    mapped = {
        (table.name, constraint.name)
        for table in metadata.tables.values()
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
    }
    assert await inspect(migrated_database_url, check_constraints) == mapped


async def test_migrating_again_changes_nothing(migrated_database_url):
    before = await inspect(migrated_database_url, snapshot)
    await migrate_database_async(migrated_database_url)
    await migrate_database_async(migrated_database_url)
    after = await inspect(migrated_database_url, snapshot)
    assert after == before
    assert after["version"] == [("0008",)]  # type: ignore[index]


async def test_downgrade_to_base_and_upgrade_again(fresh_database):
    url = fresh_database()
    await migrate_database_async(url)
    first = await inspect(url, snapshot)
    assert first["triggers"] and first["functions"]  # type: ignore[index]

    def downgrade(connection: Connection) -> set[str]:
        command.downgrade(alembic_config(connection), "base")
        return public_tables(connection)

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            assert await conn.run_sync(downgrade) == {"alembic_version"}
            functions = await conn.execute(text(SNAPSHOT["functions"]))
            assert functions.all() == []
            assert (await conn.execute(text(SNAPSHOT["version"]))).all() == []
    finally:
        await engine.dispose()

    await migrate_database_async(url)
    assert await inspect(url, snapshot) == first
    assert await inspect(url, differences) == []


async def test_0004_gives_existing_reservation_lines_their_location_and_keys_reservations_by_both(
    fresh_database,
):
    """Lines written before 0004 take their reservation's location; after it one id may be held at two."""
    url = fresh_database()
    reservation = (
        "INSERT INTO reservations (reservation_id, location_id, channel, status, event_id, created_at,"
        " expires_at, updated_at) VALUES ('r-1', :loc, 'staff', 'held', 'e-1', now(), now(), now())"
    )

    def before_0004(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "0003")
        location = "INSERT INTO locations (location_id, kind, name) VALUES (:loc, 'store', :loc)"
        for loc in ("store-a", "store-b"):
            connection.execute(text(location), {"loc": loc})
        connection.execute(text(reservation), {"loc": "store-a"})
        connection.execute(
            text(
                "INSERT INTO reservation_lines (reservation_id, sku, line_no, qty) VALUES ('r-1', 'S', 0, 2)"
            )
        )

    def after_0004(connection: Connection) -> list[tuple]:
        command.upgrade(alembic_config(connection), "head")
        connection.execute(text(reservation), {"loc": "store-b"})
        connection.execute(
            text(
                "INSERT INTO reservation_lines (reservation_id, location_id, sku, line_no, qty)"
                " VALUES ('r-1', 'store-b', 'S', 0, 3)"
            )
        )
        rows = connection.execute(text("SELECT location_id, qty FROM reservation_lines ORDER BY 1"))
        return [tuple(row) for row in rows]

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(before_0004)
        async with engine.begin() as conn:
            assert await conn.run_sync(after_0004) == [("store-a", 2), ("store-b", 3)]
    finally:
        await engine.dispose()
