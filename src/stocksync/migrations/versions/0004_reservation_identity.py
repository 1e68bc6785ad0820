"""Reservations identified per location, as events are (0003).

``reservations`` is keyed by ``(reservation_id, location_id)`` and ``reservation_lines`` carries the location
and refers to that key: a key scoped to one store cannot claim, and so block, the reservation ids the web shop
will use at another. The keys lead with ``reservation_id`` so that a lookup without a location (``GET
/v1/reservations/{id}``) uses the same index.

Downgrading fails once a reservation id is held at two locations: which of the two to drop is no schema
question.

Revision ID: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reservation_lines ADD COLUMN location_id text")
    op.execute(
        "UPDATE reservation_lines l SET location_id = r.location_id"
        " FROM reservations r WHERE r.reservation_id = l.reservation_id"
    )
    op.execute("ALTER TABLE reservation_lines ALTER COLUMN location_id SET NOT NULL")
    op.execute("ALTER TABLE reservation_lines DROP CONSTRAINT reservation_lines_reservation_id_fkey")
    op.execute("ALTER TABLE reservation_lines DROP CONSTRAINT reservation_lines_pkey")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_pkey")
    op.execute("ALTER TABLE reservations ADD PRIMARY KEY (reservation_id, location_id)")
    op.execute("ALTER TABLE reservation_lines ADD PRIMARY KEY (reservation_id, location_id, sku)")
    op.execute(
        "ALTER TABLE reservation_lines ADD CONSTRAINT reservation_lines_reservation_id_location_id_fkey"
        " FOREIGN KEY (reservation_id, location_id) REFERENCES reservations (reservation_id, location_id)"
        " ON DELETE CASCADE"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE reservation_lines DROP CONSTRAINT reservation_lines_reservation_id_location_id_fkey"
    )
    op.execute("ALTER TABLE reservation_lines DROP CONSTRAINT reservation_lines_pkey")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_pkey")
    op.execute("ALTER TABLE reservations ADD PRIMARY KEY (reservation_id)")
    op.execute("ALTER TABLE reservation_lines ADD PRIMARY KEY (reservation_id, sku)")
    op.execute(
        "ALTER TABLE reservation_lines ADD CONSTRAINT reservation_lines_reservation_id_fkey"
        " FOREIGN KEY (reservation_id) REFERENCES reservations (reservation_id) ON DELETE CASCADE"
    )
    op.execute("ALTER TABLE reservation_lines DROP COLUMN location_id")
