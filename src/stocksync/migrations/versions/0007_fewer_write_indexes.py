"""Two indexes no query reads, each written for every row: ``movements_event`` (no query looks movements up by
event; outcomes are found in processed_events) and ``outbox_relayed`` (the prune walks the outbox by id
instead, in slices, as the rows were relayed in id order). Every movement and every relayed outbox row cost an
index entry in the WAL and a B-tree insert for nothing.

Revision ID: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX movements_event")
    op.execute("DROP INDEX outbox_relayed")


def downgrade() -> None:
    op.execute("CREATE INDEX outbox_relayed ON outbox (relayed_at) WHERE relayed_at IS NOT NULL")
    op.execute("CREATE INDEX movements_event ON movements (event_id)")
