"""Labelled transactions sent to /feedback as full records: rows of kind ``feedback`` beside
the scored decisions (no score, threshold or decision of their own).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as table:  # SQLite rebuilds the table
        table.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="scored"))
        for name, kind in (("probability", sa.Float), ("threshold", sa.Float)):
            table.alter_column(name, existing_type=kind(), nullable=True)
        table.alter_column("is_fraud", existing_type=sa.Boolean(), nullable=True)


def downgrade() -> None:
    op.execute(
        "DELETE FROM label_events WHERE transaction_id IN "
        "(SELECT transaction_id FROM decisions WHERE kind = 'feedback')"
    )
    op.execute("DELETE FROM decisions WHERE kind = 'feedback'")
    with op.batch_alter_table("decisions") as table:
        for name, kind in (("probability", sa.Float), ("threshold", sa.Float)):
            table.alter_column(name, existing_type=kind(), nullable=False)
        table.alter_column("is_fraud", existing_type=sa.Boolean(), nullable=False)
        table.drop_column("kind")
