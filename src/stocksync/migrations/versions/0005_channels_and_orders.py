"""Channels (a set of locations in priority order with a buffer) and online orders sourced to them.

- ``channel_locations`` is indexed by location: the relay maps a changed position to its channels.
- ``channel_availability_version`` numbers what the relay publishes for a channel's sku: one value per pass,
  so a ``(channel, sku)`` entry's version increases with every change however many relays led before.
- An order's allocations are reservations (rule 5) named by the order id at each of ``locations``;
  ``returned`` counts per sku what returns at the stores took back of it.

Revision ID: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE channels (
            channel_id text PRIMARY KEY,
            name text NOT NULL,
            buffer bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT channels_buffer_non_negative CHECK (buffer >= 0)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE channel_locations (
            channel_id text NOT NULL REFERENCES channels (channel_id) ON DELETE CASCADE,
            location_id text NOT NULL REFERENCES locations (location_id),
            priority integer NOT NULL,
            PRIMARY KEY (channel_id, location_id)
        )
        """
    )
    op.execute("CREATE INDEX channel_locations_location ON channel_locations (location_id)")
    op.execute("CREATE SEQUENCE channel_availability_version")
    op.execute(
        """
        CREATE TABLE orders (
            order_id text PRIMARY KEY,
            channel_id text NOT NULL REFERENCES channels (channel_id),
            status text NOT NULL,
            lines jsonb NOT NULL,
            locations text[] NOT NULL DEFAULT '{}',
            shortages jsonb,
            ship_to_lat double precision,
            ship_to_lon double precision,
            ttl_seconds integer NOT NULL,
            reference text,
            body_hash bytea NOT NULL,
            returned jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            CONSTRAINT orders_status CHECK (status IN ('allocated', 'shipped', 'cancelled', 'rejected'))
        )
        """
    )
    op.execute("CREATE INDEX orders_by_channel ON orders (channel_id, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE orders")
    op.execute("DROP SEQUENCE channel_availability_version")
    op.execute("DROP TABLE channel_locations")
    op.execute("DROP TABLE channels")
