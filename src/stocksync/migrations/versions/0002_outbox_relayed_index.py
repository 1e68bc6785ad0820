"""Outbox pruning by an index on relayed_at, not a scan of the whole table.

Not ``CONCURRENTLY``: `stocksync migrate` runs every migration in one transaction under its advisory lock.
The outbox holds a day of rows (the retention), so the build is short; the relay waits for it and carries on.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX outbox_relayed ON outbox (relayed_at) WHERE relayed_at IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX outbox_relayed")
