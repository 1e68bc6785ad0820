"""The ledger's tables, mapped for SQLAlchemy Core queries. The schema itself is made by Alembic migrations;
a test compares the two so they never drift."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import UserDefinedType

metadata = MetaData()


class Xid8(UserDefinedType):
    """PostgreSQL's 64-bit transaction id (``xid8``), which SQLAlchemy does not know."""

    cache_ok = True

    def get_col_spec(self, **kw) -> str:
        return "xid8"


postgresql.base.ischema_names.setdefault("xid8", Xid8)  # so reflection (the schema test) compares it too


def _ts(name: str, *, nullable: bool = False, now: bool = False) -> Column:
    return Column(
        name, DateTime(timezone=True), nullable=nullable, server_default=text("now()") if now else None
    )


locations = Table(
    "locations",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("pickup_enabled", Boolean, nullable=False, server_default=text("false")),
    Column("lat", Float),
    Column("lon", Float),
    _ts("created_at", now=True),
    _ts("updated_at", now=True),
    CheckConstraint("kind IN ('store', 'warehouse', 'online')", name="locations_kind"),
    CheckConstraint("lat BETWEEN -90 AND 90", name="locations_lat"),
    CheckConstraint("lon BETWEEN -180 AND 180", name="locations_lon"),
)

positions = Table(
    "positions",
    metadata,
    Column("location_id", Text, ForeignKey("locations.location_id"), primary_key=True),
    Column("sku", Text, primary_key=True),
    Column("on_hand", BigInteger, nullable=False, server_default=text("0")),
    Column("reserved", BigInteger, nullable=False, server_default=text("0")),
    Column("damaged", BigInteger, nullable=False, server_default=text("0")),
    Column("safety_stock", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    _ts("last_count_at", nullable=True),
    _ts("updated_at", now=True),
    CheckConstraint("reserved >= 0", name="positions_reserved_non_negative"),
    CheckConstraint("safety_stock >= 0", name="positions_safety_stock_non_negative"),
    CheckConstraint("version >= 0", name="positions_version_non_negative"),
    Index("positions_sku", "sku"),
)

movements = Table(
    "movements",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("location_id", Text, nullable=False),
    Column("sku", Text, nullable=False),
    Column("on_hand_delta", BigInteger, nullable=False),
    Column("reserved_delta", BigInteger, nullable=False),
    Column("damaged_delta", BigInteger, nullable=False),
    Column("reason", Text),
    Column("superseded_by_count", Boolean, nullable=False, server_default=text("false")),
    Column("reservation_id", Text),
    _ts("occurred_at"),
    _ts("recorded_at"),
    # The writing transaction: the audit trail is paged by (tx, id) over finished transactions only.
    Column("tx", Xid8, nullable=False, server_default=text("pg_current_xact_id()")),
    ForeignKeyConstraint(["location_id", "sku"], ["positions.location_id", "positions.sku"]),
    Index("movements_position", "location_id", "sku", "tx", "id"),
    Index("movements_order", "tx", "id"),
    Index("movements_position_occurred", "location_id", "sku", "occurred_at"),
)

reservations = Table(
    "reservations",
    metadata,
    # With location_id: a reservation is identified by both, as an event is (migration 0004).
    Column("reservation_id", Text, primary_key=True),
    Column("location_id", Text, ForeignKey("locations.location_id"), primary_key=True),
    Column("channel", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("reference", Text),
    Column("event_id", Text, nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
    _ts("updated_at"),
    CheckConstraint("channel IN ('ecommerce', 'staff')", name="reservations_channel"),
    CheckConstraint("status IN ('held', 'collected', 'cancelled', 'expired')", name="reservations_status"),
    Index("reservations_due", "expires_at", postgresql_where=text("status = 'held'")),
    Index("reservations_by_location", "location_id", "status", "created_at"),
)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    Column("reservation_id", Text, primary_key=True),
    Column("location_id", Text, primary_key=True),
    Column("sku", Text, primary_key=True),
    Column("line_no", Integer, nullable=False),
    Column("qty", BigInteger, nullable=False),
    ForeignKeyConstraint(
        ["reservation_id", "location_id"],
        ["reservations.reservation_id", "reservations.location_id"],
        ondelete="CASCADE",
    ),
    CheckConstraint("qty > 0", name="reservation_lines_qty_positive"),
    Index("reservation_lines_sku", "sku"),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Text, primary_key=True),  # with location_id: an event is identified by both (rule 10)
    Column("location_id", Text, primary_key=True),
    Column("body_hash", LargeBinary, nullable=False),
    Column("type", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("error", Text),
    Column("detail", Text),
    Column("reservation_id", Text),
    Column("shortages", JSONB),
    _ts("recorded_at"),
    CheckConstraint("outcome IN ('applied', 'duplicate', 'rejected')", name="processed_events_outcome"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("role", Text, nullable=False),
    Column("locations", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("label", Text),
    _ts("created_at", now=True),
    _ts("revoked_at", nullable=True),
    CheckConstraint("role IN ('admin', 'ecommerce', 'staff', 'pos')", name="api_keys_role"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("msg_id", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("kv_key", Text),
    Column("version", BigInteger),
    Column("traceparent", Text),  # the writing transaction's trace, while tracing is on
    # How many messages the row carries: 1, or a transaction's messages packed in one row (`OUTBOX_BUNDLE`).
    Column("messages", Integer, nullable=False, server_default=text("1")),
    _ts("created_at", now=True),
    _ts("relayed_at", nullable=True),
    Index("outbox_unrelayed", "id", postgresql_where=text("relayed_at IS NULL")),
)

channels = Table(
    "channels",
    metadata,
    Column("channel_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("buffer", BigInteger, nullable=False, server_default=text("0")),
    _ts("created_at", now=True),
    _ts("updated_at", now=True),
    CheckConstraint("buffer >= 0", name="channels_buffer_non_negative"),
)

channel_locations = Table(
    "channel_locations",
    metadata,
    Column("channel_id", Text, ForeignKey("channels.channel_id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", Text, ForeignKey("locations.location_id"), primary_key=True),
    Column("priority", Integer, nullable=False),
    Index("channel_locations_location", "location_id"),
)

channel_availability_version = Sequence("channel_availability_version", metadata=metadata)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("channel_id", Text, ForeignKey("channels.channel_id"), nullable=False),
    Column("status", Text, nullable=False),
    Column("lines", JSONB, nullable=False),
    Column("locations", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("shortages", JSONB),
    Column("ship_to_lat", Float),
    Column("ship_to_lon", Float),
    Column("ttl_seconds", Integer, nullable=False),
    Column("reference", Text),
    Column("body_hash", LargeBinary, nullable=False),
    Column("returned", JSONB, nullable=False, server_default=text("'{}'")),
    _ts("created_at"),
    _ts("expires_at"),
    _ts("updated_at"),
    CheckConstraint("status IN ('allocated', 'shipped', 'cancelled', 'rejected')", name="orders_status"),
    Index("orders_by_channel", "channel_id", "created_at"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("webhook_id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("subjects", ARRAY(Text), nullable=False),
    Column("secret", Text, nullable=False),
    _ts("created_at", now=True),
    _ts("updated_at", now=True),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("webhook_id", Text, ForeignKey("webhooks.webhook_id", ondelete="CASCADE"), nullable=False),
    Column("subject", Text, nullable=False),
    Column("msg_id", Text),
    Column("stream_sequence", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    _ts("first_attempt_at"),
    _ts("finished_at"),
    CheckConstraint("outcome IN ('delivered', 'gave_up')", name="webhook_deliveries_outcome"),
    Index("webhook_deliveries_by_webhook", "webhook_id", "id"),
)
