"""indexes for ticks that cost what is due: the due index covers unfinished batches
only (finished ones are never scanned again); batch_events gains (batch_id, id) for
`events ID` and (kind, at) for --kind and retention

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

from watchdog.storage.tables import NOT_FINISHED

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_batches_next_poll_at", table_name="batches")
    op.create_index(
        "ix_batches_due",
        "batches",
        ["next_poll_at"],
        sqlite_where=NOT_FINISHED,
        postgresql_where=NOT_FINISHED,
    )
    op.create_index("ix_batch_events_batch_id_id", "batch_events", ["batch_id", "id"])
    op.create_index("ix_batch_events_kind_at", "batch_events", ["kind", "at"])


def downgrade() -> None:
    op.drop_index("ix_batch_events_kind_at", table_name="batch_events")
    op.drop_index("ix_batch_events_batch_id_id", table_name="batch_events")
    op.drop_index("ix_batches_due", table_name="batches")
    op.create_index("ix_batches_next_poll_at", "batches", ["next_poll_at"])
