"""``outbox.messages``: how many messages a row carries. A transaction's messages are written as one row (a
bundle, `adapters.outbox.packed`) instead of one row each: every outbox row is written three times (insert,
the relay's mark, the prune), and a batch of 500 events wrote about 1,100 of them. A column with a constant
default is added without rewriting the table.

Revision ID: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN messages integer NOT NULL DEFAULT 1")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox DROP COLUMN messages")
