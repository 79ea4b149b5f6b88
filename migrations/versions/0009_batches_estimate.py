"""batches gains estimate (JSON): what the batch's input file said before it ran —
its requests, estimated input tokens and output bound per model, or why it could not be
read — made once and kept

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("estimate", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("estimate")
