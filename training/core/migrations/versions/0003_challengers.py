"""Live challengers: which arm answered a decision, and the other model's score of the same
transaction (a shadow challenger's, or the champion's behind a canary answer).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("arm", sa.String(16)),
    ("shadow_version", sa.String(64)),
    ("shadow_probability", sa.Float),
    ("shadow_is_fraud", sa.Boolean),
)


def upgrade() -> None:
    with op.batch_alter_table("decisions") as table:
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
