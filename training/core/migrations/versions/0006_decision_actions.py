"""Decision rules on every decision: the action answered (approve, review, decline), the rule
that decided it (None: no rule matched) and the rule set's version; and an index for the review
queue (a day's decisions by action). On PostgreSQL the partitioned table passes the columns and
the index to every day's partition.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (
    ("action", sa.String(16)),
    ("rule", sa.String(64)),
    ("rule_set_version", sa.String(64)),
)


def upgrade() -> None:
    with op.batch_alter_table("decisions") as table:
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind, nullable=True))
    op.create_index("ix_decisions_day_action", "decisions", ["tx_day", "action"])


def downgrade() -> None:
    op.drop_index("ix_decisions_day_action", table_name="decisions")
    with op.batch_alter_table("decisions") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
