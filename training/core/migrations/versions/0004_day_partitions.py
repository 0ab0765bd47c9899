"""Day partitions on PostgreSQL: ``decisions`` range-partitioned by ``tx_day``,
``label_events`` by ``labelled_at``, one partition a day (see training/core/partitions.py), so
retention drops a day instead of deleting millions of rows. Every row is moved across in the
migration's transaction; the primary keys gain the partition key, as PostgreSQL requires
(a transaction's id and its day; an event's id and its time). SQLite: nothing changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# table: (partition key, primary key, its indexes: name -> columns)
LAYOUT = {
    "decisions": (
        "tx_day",
        "transaction_id, tx_day",
        {
            "ix_decisions_tx_day": "tx_day",
            "ix_decisions_customer_time": "customer_id, tx_time",
            "ix_decisions_terminal_time": "terminal_id, tx_time",
        },
    ),
    "label_events": (
        "labelled_at",
        "event_id, labelled_at",
        {
            "ix_label_events_tx": "transaction_id, labelled_at",
            "ix_label_events_time": "labelled_at",
        },
    ),
}


def _set_aside(table: str, indexes: dict[str, str], suffix: str) -> str:
    """Rename ``table``, its primary key and indexes out of the way (``suffix`` appended);
    the new name."""
    old = f"{table}_{suffix}"
    primary = (
        op.get_bind()
        .exec_driver_sql(
            f"SELECT conname FROM pg_constraint WHERE conrelid = '{table}'::regclass "
            "AND contype = 'p'"
        )
        .scalar()
    )
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {primary} TO {old}_pkey")
    for index in indexes:
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_{suffix}")
    return old


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from training.core import partitions

    days: set = set()
    for table, (key, primary, indexes) in LAYOUT.items():
        old = _set_aside(table, indexes, "unpartitioned")
        op.execute(
            f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS, PRIMARY KEY ({primary})) "
            f"PARTITION BY RANGE ({key})"
        )
        for index, columns in indexes.items():
            op.execute(f"CREATE INDEX {index} ON {table} ({columns})")
        day = key if table == "decisions" else f"({key} AT TIME ZONE 'UTC')::date"
        days |= {r[0] for r in bind.exec_driver_sql(f"SELECT DISTINCT {day} FROM {old}")}
    today = datetime.now(UTC).date()
    days |= {today + timedelta(days=d) for d in range(-1, partitions.AHEAD_DAYS + 1)}
    for day in sorted(days):
        partitions.create(bind, day)
    for table in LAYOUT:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
        op.execute(f"DROP TABLE {table}_unpartitioned")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, (_, primary, indexes) in LAYOUT.items():
        first = primary.split(",")[0]
        _set_aside(table, indexes, "partitioned")
        op.execute(
            f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS, "
            f"PRIMARY KEY ({first}))"
        )
        for index, columns in indexes.items():
            op.execute(f"CREATE INDEX {index} ON {table} ({columns})")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_partitioned")
        op.execute(f"DROP TABLE {table}_partitioned CASCADE")
