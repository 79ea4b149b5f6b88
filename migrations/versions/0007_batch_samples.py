"""batch_samples: what each poll that saw something new observed (status, request
counts, usage tokens), so that `replay` can judge recorded history again with other
policies, prices or budgets

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from watchdog.storage.tables import BigId, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_samples",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(64)),
        sa.Column("request_total", sa.BigInteger),
        sa.Column("request_completed", sa.BigInteger),
        sa.Column("request_failed", sa.BigInteger),
        sa.Column("input_tokens", sa.BigInteger),
        sa.Column("cached_tokens", sa.BigInteger),
        sa.Column("output_tokens", sa.BigInteger),
        sa.Column("reasoning_tokens", sa.BigInteger),
    )
    op.create_index(
        "ix_batch_samples_provider_batch_id_at", "batch_samples", ["provider", "batch_id", "at"]
    )
    op.create_index("ix_batch_samples_at", "batch_samples", ["at"])


def downgrade() -> None:
    op.drop_index("ix_batch_samples_at", table_name="batch_samples")
    op.drop_index("ix_batch_samples_provider_batch_id_at", table_name="batch_samples")
    op.drop_table("batch_samples")
