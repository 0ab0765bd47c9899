"""The decision log and the label events.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("transaction_id", sa.String(64), primary_key=True),
        sa.Column("tx_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx_day", sa.Date, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("terminal_id", sa.String(64), nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("merchant_category", sa.String(32), nullable=False),
        sa.Column("features", sa.JSON, nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("is_fraud", sa.Boolean, nullable=False),
        sa.Column("degraded", sa.Boolean, nullable=False),
        sa.Column("api_key", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_decisions_tx_day", "decisions", ["tx_day"])
    op.create_index("ix_decisions_customer_time", "decisions", ["customer_id", "tx_time"])
    op.create_index("ix_decisions_terminal_time", "decisions", ["terminal_id", "tx_time"])
    op.create_table(
        "label_events",
        sa.Column("event_id", sa.String(96), primary_key=True),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("is_fraud", sa.Boolean, nullable=False),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("api_key", sa.String(64), nullable=True),
    )
    op.create_index("ix_label_events_tx", "label_events", ["transaction_id", "labelled_at"])
    op.create_index("ix_label_events_time", "label_events", ["labelled_at"])


def downgrade() -> None:
    op.drop_table("label_events")
    op.drop_table("decisions")
