"""safety: for-clocks, progress history, silences, follow-through, daemon state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import watchdog.storage.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = watchdog.storage.tables.UTCDateTime()


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("pending", sa.JSON()))
        batch.add_column(sa.Column("progress_at", UTC))
        batch.add_column(sa.Column("exempt_until", UTC))
        batch.add_column(sa.Column("exempt_reason", sa.Text()))
        batch.add_column(sa.Column("cancel_projected_usd", sa.Float()))
        batch.add_column(sa.Column("cancel_stuck_at", UTC))
    with op.batch_alter_table("batch_events") as batch:
        batch.alter_column("provider", existing_type=sa.String(64), nullable=True)
        batch.alter_column("batch_id", existing_type=sa.String(128), nullable=True)
    op.create_table(
        "watchdog_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.JSON()),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_watchdog_state")),
    )


def downgrade() -> None:
    op.drop_table("watchdog_state")
    op.execute("DELETE FROM batch_events WHERE provider IS NULL OR batch_id IS NULL")
    with op.batch_alter_table("batch_events") as batch:
        batch.alter_column("provider", existing_type=sa.String(64), nullable=False)
        batch.alter_column("batch_id", existing_type=sa.String(128), nullable=False)
    with op.batch_alter_table("batches") as batch:
        for name in (
            "cancel_stuck_at",
            "cancel_projected_usd",
            "exempt_reason",
            "exempt_until",
            "progress_at",
            "pending",
        ):
            batch.drop_column(name)
