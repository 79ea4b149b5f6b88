"""batches gains finished_at (when the daemon saw the batch end), indexed: the budgets
take in what ended since they last looked through it, instead of reading every finished
batch of their window on every tick

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from watchdog.storage.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ENDED = "'completed', 'expired', 'failed', 'cancelled'"


def upgrade() -> None:
    op.add_column("batches", sa.Column("finished_at", UTCDateTime))
    # What ended before: when it ended, as well as the row knows it.
    op.execute(
        "UPDATE batches SET finished_at = COALESCE(completed_at, failed_at, expired_at, "
        f"cancelled_at, last_polled_at, tracked_at) WHERE status IN ({ENDED})"
    )
    op.create_index("ix_batches_finished_at", "batches", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_finished_at", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("finished_at")
