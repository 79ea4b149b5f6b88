"""batches and batch_events

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import watchdog.storage.tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC = watchdog.storage.tables.UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(64)),
        sa.Column("endpoint", sa.String(128)),
        sa.Column("model", sa.String(256)),
        sa.Column("metadata", sa.JSON()),
        *(
            sa.Column(name, UTC)
            for name in (
                "created_at",
                "expires_at",
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        ),
        sa.Column("output_file_id", sa.String(128)),
        sa.Column("error_file_id", sa.String(128)),
        sa.Column("errors", sa.JSON()),
        *(
            sa.Column(name, sa.BigInteger())
            for name in (
                "request_total",
                "request_completed",
                "request_failed",
                "input_tokens",
                "cached_tokens",
                "output_tokens",
                "reasoning_tokens",
            )
        ),
        sa.Column("cost_usd", sa.Float()),
        sa.Column("matched_policy", sa.String(64)),
        sa.Column("labels", sa.JSON()),
        sa.Column("tracked_at", UTC),
        sa.Column("next_poll_at", UTC),
        sa.Column("last_polled_at", UTC),
        sa.Column("poll_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", UTC),
        sa.Column("cancel_policy", sa.String(64)),
        sa.Column("cancel_requested_at", UTC),
        sa.Column("cancel_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancel_outcome", sa.String(32)),
        sa.Column("cancel_finished_at", UTC),
        sa.Column("pricing_missing_at", UTC),
        sa.PrimaryKeyConstraint("provider", "batch_id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_next_poll_at"), "batches", ["next_poll_at"])
    op.create_index(op.f("ix_batches_status"), "batches", ["status"])
    op.create_table(
        "batch_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", UTC, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(64)),
        sa.Column("to_status", sa.String(64)),
        sa.Column("policy", sa.String(64)),
        sa.Column("detail", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_events")),
    )
    op.create_index(
        op.f("ix_batch_events_provider_batch_id_id"), "batch_events", ["provider", "batch_id", "id"]
    )
    op.create_index(op.f("ix_batch_events_at"), "batch_events", ["at"])


def downgrade() -> None:
    op.drop_table("batch_events")
    op.drop_table("batches")
