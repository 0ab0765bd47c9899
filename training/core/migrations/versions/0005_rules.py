"""Decision rules: the rule sets applied (each version kept, the one in force marked) and the
managed lists' entries (block and allow lists of customers and terminals), with who changed
them and when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rule_sets",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rule_sets_applied", "rule_sets", ["applied_at"])
    op.create_table(
        "list_entries",
        sa.Column("list_name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), primary_key=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=True),
        sa.Column("note", sa.String(256), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("list_entries")
    op.drop_index("ix_rule_sets_applied", "rule_sets")
    op.drop_table("rule_sets")
