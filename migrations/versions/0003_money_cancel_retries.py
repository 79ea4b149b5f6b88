"""money as exact decimals: cost_usd and cancel_projected_usd from FLOAT to NUMERIC
(text on SQLite, whose NUMERIC is a float underneath); cancel_retries, the transient
failures in a row of the cancel under way (its backoff)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import watchdog.storage.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MONEY = ("cost_usd", "cancel_projected_usd")


def _using(column: str, cast: str) -> dict[str, str]:
    # PostgreSQL converts in place; SQLite's batch mode copies the table (REAL → text).
    return (
        {"postgresql_using": f"{column}::{cast}"} if op.get_bind().dialect.name != "sqlite" else {}
    )


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column("cancel_retries", sa.Integer(), nullable=False, server_default="0")
        )
        for column in MONEY:
            batch.alter_column(
                column,
                existing_type=sa.Float(),
                type_=watchdog.storage.tables.Money(),
                **_using(column, "numeric(24,12)"),
            )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("cancel_retries")
        for column in MONEY:
            batch.alter_column(
                column,
                existing_type=watchdog.storage.tables.Money(),
                type_=sa.Float(),
                **_using(column, "double precision"),
            )
