"""Webhooks: out-stream messages delivered by HTTP to systems that cannot consume NATS (an ERP, a
marketplace connector), and a log of what became of each delivery. And ``outbox.traceparent``: the trace of the
transaction that wrote a row, continued by the relay's publish (written only while tracing is on).

Revision ID: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhooks (
            webhook_id text PRIMARY KEY,
            url text NOT NULL,
            subjects text[] NOT NULL,
            secret text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            webhook_id text NOT NULL REFERENCES webhooks (webhook_id) ON DELETE CASCADE,
            subject text NOT NULL,
            msg_id text,
            stream_sequence bigint NOT NULL,
            outcome text NOT NULL,
            attempts integer NOT NULL,
            last_status integer,
            last_error text,
            first_attempt_at timestamptz NOT NULL,
            finished_at timestamptz NOT NULL,
            CONSTRAINT webhook_deliveries_outcome CHECK (outcome IN ('delivered', 'gave_up'))
        )
        """
    )
    op.execute("CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id)")
    op.execute("ALTER TABLE outbox ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox DROP COLUMN traceparent")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhooks")
