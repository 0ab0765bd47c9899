"""The decision and label log in a database: PostgreSQL in the stack and in production, an
embedded SQLite file for ``make run`` (one code path, the URL decides). Tables are created and
upgraded by Alembic (``training/core/migrations``; on PostgreSQL both tables are partitioned
by day, :mod:`training.core.partitions`); writes are idempotent (a decision on its
transaction id, a label event on its event id), so a journal shipped twice stores once."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from training.core import partitions

MIGRATIONS = Path(__file__).with_name("migrations")
metadata = sa.MetaData()
SCORED, FEEDBACK = "scored", "feedback"  # decisions.kind

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("transaction_id", sa.String(64), primary_key=True),
    sa.Column("tx_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("tx_day", sa.Date, nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("terminal_id", sa.String(64), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("merchant_category", sa.String(32), nullable=False),
    sa.Column("features", sa.JSON, nullable=True),  # the vector the model scored, by name
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("probability", sa.Float, nullable=True),  # None on a feedback record
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("is_fraud", sa.Boolean, nullable=True),  # the decision
    sa.Column("degraded", sa.Boolean, nullable=False),
    sa.Column("api_key", sa.String(64), nullable=True),
    sa.Column("worker", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # scored: a decision; feedback: a labelled transaction sent to /feedback, never scored here
    sa.Column("kind", sa.String(16), nullable=False, server_default="scored"),
    # live challengers: the arm that answered (champion, canary; None: no challenger ran) and
    # the other model's score of the same transaction (a shadow's, or the champion's behind a
    # canary answer)
    sa.Column("arm", sa.String(16), nullable=True),
    sa.Column("shadow_version", sa.String(64), nullable=True),
    sa.Column("shadow_probability", sa.Float, nullable=True),
    sa.Column("shadow_is_fraud", sa.Boolean, nullable=True),
    # decision rules (training/core/rules.py): the action answered, the rule that decided it
    # (None: none matched, approved) and the rule set's version; None before rules existed
    sa.Column("action", sa.String(16), nullable=True),
    sa.Column("rule", sa.String(64), nullable=True),
    sa.Column("rule_set_version", sa.String(64), nullable=True),
    sa.Index("ix_decisions_tx_day", "tx_day"),
    sa.Index("ix_decisions_day_action", "tx_day", "action"),
    sa.Index("ix_decisions_customer_time", "customer_id", "tx_time"),
    sa.Index("ix_decisions_terminal_time", "terminal_id", "tx_time"),
)

label_events = sa.Table(
    "label_events",
    metadata,
    sa.Column("event_id", sa.String(96), primary_key=True),  # <worker>:<sequence>
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("is_fraud", sa.Boolean, nullable=False),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("api_key", sa.String(64), nullable=True),
    sa.Index("ix_label_events_tx", "transaction_id", "labelled_at"),
    sa.Index("ix_label_events_time", "labelled_at"),
)


# A decision as the journal carries it (serving/journal.py): the table's columns, but its times
# as epoch milliseconds: ``time_ms`` gives tx_time and tx_day, ``received_at`` is converted.
JOURNAL_FIELDS = frozenset(
    {c.name for c in decisions.columns} - {"tx_time", "tx_day"} | {"time_ms"}
)


def journal_fields_problem(fields: Iterable[str]) -> str | None:
    """What a journal decision with these fields lacks or has too many of (None: nothing)."""
    given = set(fields) - {"k"}
    missing, extra = JOURNAL_FIELDS - given, given - JOURNAL_FIELDS
    if not missing and not extra:
        return None
    return f"journal decision: missing {sorted(missing)}, unknown {sorted(extra)}"


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def decision_row(item: dict[str, Any]) -> dict[str, Any]:
    """A journal decision (``k`` removed) as the table's row, in place. Lines written before a
    column existed get its default (every row of one insert has the same keys)."""
    tx_time = _utc(item.pop("time_ms"))
    item.update(tx_time=tx_time, tx_day=tx_time.date(), received_at=_utc(item["received_at"]))
    if len(item) != len(decisions.columns):
        for column in decisions.columns:
            if column.name not in item:
                item[column.name] = SCORED if column.name == "kind" else None
    return item


def label_row(item: dict[str, Any]) -> dict[str, Any]:
    """A journal label event (``k`` removed) as the table's row, in place."""
    item["labelled_at"] = _utc(item["labelled_at"])
    return item


def _json_text(value: Any) -> str:
    """The JSON column's text by orjson: exact floats, ~15x faster than ``json``."""
    return orjson.dumps(value).decode()


def engine_for(url: str, bulk: bool = False) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL (readers do not block the shipper) and
    their folder is created. ``bulk``: PostgreSQL through psycopg 3 whatever driver the URL
    names, so :func:`write` loads by COPY (the shipper)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    parsed = sa.engine.make_url(url)
    if bulk and parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(
        parsed, pool_pre_ping=True, json_serializer=_json_text, json_deserializer=orjson.loads
    )
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


@contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    """A connection to the store at ``url`` for one piece of work (its engine disposed after)."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def revision(url: str) -> str | None:
    """The store's current migration (None: not migrated)."""
    from alembic.runtime.migration import MigrationContext

    with connect(url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, wait_s: float = 10.0) -> str:
    """Bring the database at ``url`` to the latest migration; its revision. Workers and
    replicas starting together race to migrate: one that fails because another was doing it
    checks again until the store is at the head (``wait_s`` at most)."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    cfg = alembic_config(url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            command.upgrade(cfg, "head")
            break
        except (sa.exc.SQLAlchemyError, CommandError):  # another one created it, moved it on
            if revision(url) == head:
                break
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    partitions.forget()  # what this process knew of the store's partitions may have changed
    return str(revision(url))


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for this database."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database {conn.dialect.name}: PostgreSQL or SQLite")


def write(
    conn: sa.Connection,
    decision_rows: Sequence[dict[str, Any]],
    label_rows: Sequence[dict[str, Any]],
) -> tuple[int, int]:
    """Insert decisions and label events, skipping those already stored; (decisions, label
    events) newly stored. Call inside a transaction. PostgreSQL through psycopg 3 loads by
    COPY; other drivers and SQLite by executemany."""
    if conn.dialect.name == "postgresql":  # the days' partitions first (made once, then known)
        partitions.ensure(conn.engine, partitions.days_of(decision_rows, label_rows))
    copy = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
    stored = [0, 0]
    for i, (table, rows) in enumerate(((decisions, decision_rows), (label_events, label_rows))):
        if rows and copy:
            stored[i] = _copy(conn, table, rows)
        elif rows:
            stored[i] = conn.execute(_insert(conn, table), list(rows)).rowcount or 0
    return stored[0], stored[1]


def _copy(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """COPY ``rows`` into a session-temporary twin of ``table``, then move them across
    skipping those stored already (COPY alone cannot skip); rows newly stored."""
    names = [c.name for c in table.columns]
    json_columns = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    # named after its columns: a session's temporary twin made before a migration added one
    # is not reused after it (COPY would name a column it lacks)
    staging = f"staging_{table.name}_{zlib.crc32(','.join(names).encode()):08x}"
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
        f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {staging} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(
                [
                    _json_text(row[n]) if n in json_columns and row[n] is not None else row[n]
                    for n in names
                ]
            )
    listed = ", ".join(names)
    moved = conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({listed}) SELECT {listed} FROM {staging} ON CONFLICT DO NOTHING"
    )
    conn.exec_driver_sql(f"TRUNCATE {staging}")
    return int(moved.rowcount or 0)


def label_history(conn: sa.Connection, transaction_id: str) -> list[dict[str, Any]]:
    """A transaction's label events, oldest first."""
    q = (
        sa.select(label_events)
        .where(label_events.c.transaction_id == transaction_id)
        .order_by(label_events.c.labelled_at, label_events.c.event_id)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def decision(conn: sa.Connection, transaction_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(decisions).where(decisions.c.transaction_id == transaction_id)
    ).first()
    return dict(row._mapping) if row else None


def count(conn: sa.Connection, table: sa.Table, ids: Iterable[str] | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(table)
    if ids is not None:
        q = q.where(table.c.transaction_id.in_(list(ids)))
    return int(conn.execute(q).scalar_one())


def latest_time(conn: sa.Connection) -> Any:
    """The latest logged transaction time (None: nothing logged)."""
    return conn.execute(sa.select(sa.func.max(decisions.c.tx_time))).scalar()


def count_since(conn: sa.Connection, since: Any) -> int:
    """Decisions with ``tx_time >= since``."""
    q = sa.select(sa.func.count()).select_from(decisions).where(decisions.c.tx_time >= since)
    return int(conn.execute(q).scalar() or 0)


def latest_labels(before: Any = None) -> Any:
    """Subquery: each labelled transaction's latest label (``before``: as known then)."""
    ranked = sa.select(
        label_events.c.transaction_id,
        label_events.c.is_fraud.label("label"),
        label_events.c.labelled_at,
        sa.func.row_number()
        .over(
            partition_by=label_events.c.transaction_id,
            order_by=(label_events.c.labelled_at.desc(), label_events.c.event_id.desc()),
        )
        .label("rank"),
    )
    if before is not None:
        ranked = ranked.where(label_events.c.labelled_at < before)
    sub = ranked.subquery()
    return (
        sa.select(sub.c.transaction_id, sub.c.label, sub.c.labelled_at)
        .where(sub.c.rank == 1)
        .subquery("latest")
    )


def decisions_with_labels(conn: sa.Connection, since: Any, until: Any = None) -> Any:
    """Decisions with ``since <= tx_time < until`` and their latest label (None: none yet),
    oldest first, as a DataFrame."""
    import pandas as pd

    latest = latest_labels()
    q = (
        sa.select(decisions, latest.c.label, latest.c.labelled_at)
        .outerjoin(latest, latest.c.transaction_id == decisions.c.transaction_id)
        .where(decisions.c.tx_time >= since)
        .order_by(decisions.c.tx_time, decisions.c.transaction_id)
    )
    if until is not None:
        q = q.where(decisions.c.tx_time < until)
    rows = [dict(r._mapping) for r in conn.execute(q)]
    columns = [c.name for c in decisions.columns] + ["label", "labelled_at"]
    return pd.DataFrame(rows, columns=columns)


def purge(conn: sa.Connection, before_day: Any) -> tuple[int, int]:
    """Delete decisions of days before ``before_day`` and their label events; (decisions,
    label events) deleted. A partitioned store drops whole days (:mod:`.partitions`)."""
    if partitions.partitioned(conn):
        return partitions.drop_before(conn, before_day)
    old = sa.select(decisions.c.transaction_id).where(decisions.c.tx_day < before_day)
    labels = conn.execute(
        sa.delete(label_events).where(label_events.c.transaction_id.in_(old))
    ).rowcount
    gone = conn.execute(sa.delete(decisions).where(decisions.c.tx_day < before_day)).rowcount
    return int(gone or 0), int(labels or 0)
