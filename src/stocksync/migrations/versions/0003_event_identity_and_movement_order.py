"""Events identified per location; movements ordered by their transaction, so paging never skips one.

- ``processed_events`` is keyed by ``(event_id, location_id)`` (rule 10): no key of one store can claim, and so
  block, the ids another store's tills will use. The key leads with ``event_id`` so that the same index serves
  ``GET /v1/events/{event_id}`` without a location.
- ``movements.tx`` is the id of the transaction that wrote the row. An identity is taken before commit, so a
  reader paging by ``id`` passes the gap a late commit fills; paging by ``(tx, id)`` over the transactions older
  than every running one never does (docs/design.md, "Paging the audit trail"). Rows already there get this
  migration's transaction id (the default is evaluated once), which orders after them all and among them by id.
  ``movements_position`` gains ``tx`` (the position-filtered page) and ``movements_order`` serves the others.

Downgrading fails once an event id is recorded at two locations: which of the two to drop is no schema question.

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey")
    op.execute("ALTER TABLE processed_events ADD PRIMARY KEY (event_id, location_id)")
    op.execute("ALTER TABLE movements ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.execute("DROP INDEX movements_position")
    op.execute("CREATE INDEX movements_position ON movements (location_id, sku, tx, id)")
    op.execute("CREATE INDEX movements_order ON movements (tx, id)")


def downgrade() -> None:
    op.execute("DROP INDEX movements_order")
    op.execute("DROP INDEX movements_position")
    op.execute("CREATE INDEX movements_position ON movements (location_id, sku, id)")
    op.execute("ALTER TABLE movements DROP COLUMN tx")
    op.execute("ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey")
    op.execute("ALTER TABLE processed_events ADD PRIMARY KEY (event_id)")
