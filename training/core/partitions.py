"""Day partitions of the decision store on PostgreSQL: ``decisions`` is range-partitioned by
``tx_day`` and ``label_events`` by ``labelled_at``, one partition a day (migration 0004).
Partitions are made ahead (today and the next AHEAD_DAYS, by the shipper and the retention
task) and on demand for any other day a delivery brings (a backfill, the demo's 2018 stream);
retention drops whole partitions instead of deleting rows. SQLite stores stay one table each:
every function here is a no-op there."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

AHEAD_DAYS = 7
LOCK_TIMEOUT = "5s"  # creating a partition locks its parent: never wait long behind a reader
TABLES = ("decisions", "label_events")  # by tx_day and by labelled_at
_known: dict[str, set[date]] = {}  # per store: days whose partitions exist (both tables)
_flat: set[str] = set()  # stores found unpartitioned (SQLite, or before migration 0004)


def forget() -> None:
    """Drop what this process knows of partitions (after a migration or a retention)."""
    _known.clear()
    _flat.clear()


def partitioned(conn: sa.Connection) -> bool:
    """Whether the store's ``decisions`` is a partitioned PostgreSQL table."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.exec_driver_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass('decisions')"
    ).scalar()
    return kind == "p"


def name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _bounds(table: str, day: date) -> str:
    nxt = day + timedelta(days=1)
    if table == "decisions":  # a date column
        return f"FROM ('{day.isoformat()}') TO ('{nxt.isoformat()}')"
    return f"FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"


def create(conn: sa.Connection, day: date) -> None:
    """The day's partition of both tables (kept when it exists). Serialised across shippers by
    an advisory lock; never waits more than LOCK_TIMEOUT for the parent's lock."""
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(b"partitions")})
    for table in TABLES:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {name(table, day)} PARTITION OF {table} "
            f"FOR VALUES {_bounds(table, day)}"
        )


def existing(conn: sa.Connection, table: str = "decisions") -> list[date]:
    """The days ``table`` has a partition for, oldest first."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = to_regclass('{table}')"
    )
    prefix = f"{table}_p"
    return sorted(
        datetime.strptime(r[0][len(prefix) :], "%Y%m%d").date()
        for r in rows
        if r[0].startswith(prefix)
    )


def ensure(engine: sa.Engine, days: Iterable[date]) -> int:
    """Partitions for ``days`` (both tables) where the store is partitioned, each in a short
    transaction of its own; how many were made. Days known to exist cost nothing."""
    key = engine.url.render_as_string(hide_password=False)
    known = _known.get(key)
    wanted = set(days)
    if key in _flat or (known is not None and wanted <= known):
        return 0
    with engine.connect() as conn:
        if not partitioned(conn):
            _flat.add(key)
            return 0
        known = set(existing(conn)) & set(existing(conn, "label_events"))
    made = 0
    for day in sorted(wanted - known):
        with engine.begin() as conn:
            create(conn, day)
        known.add(day)
        made += 1
    _known[key] = known
    return made


def ensure_ahead(engine: sa.Engine, today: date | None = None, ahead: int = AHEAD_DAYS) -> int:
    """Yesterday's, today's and the next ``ahead`` days' partitions (a late line, live
    traffic, and the days until the next run)."""
    today = today or datetime.now(UTC).date()
    return ensure(engine, (today + timedelta(days=d) for d in range(-1, ahead + 1)))


def days_of(
    decision_rows: Iterable[dict[str, Any]], label_rows: Iterable[dict[str, Any]]
) -> set[date]:
    """The partition days a delivery writes to."""
    days = {r["tx_day"] for r in decision_rows}
    days |= {r["labelled_at"].astimezone(UTC).date() for r in label_rows}
    return days


def drop_before(conn: sa.Connection, before_day: date) -> tuple[int, int]:
    """Retention on a partitioned store: the label events (of any day) of decisions before
    ``before_day`` deleted, then every partition of both tables wholly before it dropped;
    (decisions, label events) removed."""
    labels = conn.execute(
        sa.text(
            "DELETE FROM label_events l USING decisions d WHERE d.transaction_id = "
            "l.transaction_id AND d.tx_day < :day AND l.labelled_at >= :at"
        ),
        {"day": before_day, "at": datetime.combine(before_day, datetime.min.time(), UTC)},
    ).rowcount
    gone = [0, 0]
    for i, table in enumerate(TABLES):
        for day in existing(conn, table):
            if day >= before_day:
                break
            part = name(table, day)
            gone[i] += int(conn.exec_driver_sql(f"SELECT count(*) FROM {part}").scalar() or 0)
            conn.exec_driver_sql(f"DROP TABLE {part}")
    forget()
    return gone[0], gone[1] + int(labels or 0)
