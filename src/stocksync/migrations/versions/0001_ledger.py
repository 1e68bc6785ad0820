"""The ledger: locations, positions, append-only movements, reservations, processed events, API keys, outbox.

Revision ID: 0001
"""

from __future__ import annotations

import re

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE locations (
    location_id text PRIMARY KEY,
    kind text NOT NULL CONSTRAINT locations_kind CHECK (kind IN ('store', 'warehouse', 'online')),
    name text NOT NULL,
    pickup_enabled boolean NOT NULL DEFAULT false,
    lat double precision CONSTRAINT locations_lat CHECK (lat BETWEEN -90 AND 90),
    lon double precision CONSTRAINT locations_lon CHECK (lon BETWEEN -180 AND 180),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE positions (
    location_id text NOT NULL REFERENCES locations (location_id),
    sku text NOT NULL,
    on_hand bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0 CONSTRAINT positions_reserved_non_negative CHECK (reserved >= 0),
    damaged bigint NOT NULL DEFAULT 0,
    safety_stock bigint NOT NULL DEFAULT 0
        CONSTRAINT positions_safety_stock_non_negative CHECK (safety_stock >= 0),
    version bigint NOT NULL DEFAULT 0 CONSTRAINT positions_version_non_negative CHECK (version >= 0),
    last_count_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, sku)
);
CREATE INDEX positions_sku ON positions (sku);

CREATE TABLE movements (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL,
    type text NOT NULL,
    location_id text NOT NULL,
    sku text NOT NULL,
    on_hand_delta bigint NOT NULL,
    reserved_delta bigint NOT NULL,
    damaged_delta bigint NOT NULL,
    reason text,
    superseded_by_count boolean NOT NULL DEFAULT false,
    reservation_id text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    FOREIGN KEY (location_id, sku) REFERENCES positions (location_id, sku)
);
CREATE INDEX movements_position ON movements (location_id, sku, id);
CREATE INDEX movements_position_occurred ON movements (location_id, sku, occurred_at);
CREATE INDEX movements_event ON movements (event_id);

-- Rule 2: movements are the audit trail; the database itself refuses to change or remove one.
CREATE FUNCTION movements_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'movements are append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
    END
$$;
CREATE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON movements
    FOR EACH ROW EXECUTE FUNCTION movements_append_only();
CREATE TRIGGER movements_no_truncate BEFORE TRUNCATE ON movements
    FOR EACH STATEMENT EXECUTE FUNCTION movements_append_only();

CREATE TABLE reservations (
    reservation_id text PRIMARY KEY,
    location_id text NOT NULL REFERENCES locations (location_id),
    channel text NOT NULL CONSTRAINT reservations_channel CHECK (channel IN ('ecommerce', 'staff')),
    status text NOT NULL
        CONSTRAINT reservations_status CHECK (status IN ('held', 'collected', 'cancelled', 'expired')),
    reference text,
    event_id text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'held';
CREATE INDEX reservations_by_location ON reservations (location_id, status, created_at);

CREATE TABLE reservation_lines (
    reservation_id text NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    sku text NOT NULL,
    line_no integer NOT NULL,
    qty bigint NOT NULL CONSTRAINT reservation_lines_qty_positive CHECK (qty > 0),
    PRIMARY KEY (reservation_id, sku)
);
CREATE INDEX reservation_lines_sku ON reservation_lines (sku);

CREATE TABLE processed_events (
    event_id text PRIMARY KEY,
    body_hash bytea NOT NULL,
    type text NOT NULL,
    location_id text NOT NULL,
    outcome text NOT NULL
        CONSTRAINT processed_events_outcome CHECK (outcome IN ('applied', 'duplicate', 'rejected')),
    error text,
    detail text,
    reservation_id text,
    shortages jsonb,
    recorded_at timestamptz NOT NULL
);

CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    secret_hash bytea NOT NULL,
    role text NOT NULL CONSTRAINT api_keys_role CHECK (role IN ('admin', 'ecommerce', 'staff', 'pos')),
    locations text[] NOT NULL DEFAULT '{}',
    label text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject text NOT NULL,
    msg_id text NOT NULL,
    payload bytea NOT NULL,
    kv_key text,
    version bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    relayed_at timestamptz
);
CREATE INDEX outbox_unrelayed ON outbox (id) WHERE relayed_at IS NULL;
"""

TABLES = (
    "outbox",
    "api_keys",
    "processed_events",
    "reservation_lines",
    "reservations",
    "movements",
    "positions",
    "locations",
)


def upgrade() -> None:
    # asyncpg prepares each statement, so run them one by one (a function body's lines are indented).
    for statement in re.split(r";\n+(?=\S)", SCHEMA.strip()):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE " + ", ".join(TABLES) + " CASCADE")
    op.execute("DROP FUNCTION movements_append_only()")
