"""The decision log as a day-partitioned Parquet lake (``FRAUD_LAKE_URL``: a local path or any
fsspec URL, object storage in production), what the Spark engine reads past one machine
(:mod:`training.spark.lake`).

Layout: ``<lake>/decisions/day=YYYY-MM-DD/part-0.parquet`` (a day's decisions by transaction
day, in the store's order: time, then id) and ``<lake>/label_events/day=YYYY-MM-DD/
part-0.parquet`` (label events by the day they were given). Only closed days are written: a
day before the store's clock no longer changes (a decision belongs to its transaction's day, a
label event to its own), so each is written once, whole, and a re-run rewrites the same file.

Written by a daily task (the retraining DAG's ``decision_lake``, ``fraudops decisions
export-lake``), not by the shipper: the shipper delivers every half second, which would make
thousands of small files a day (what object stores and Spark read worst) or a compaction job;
a day file written once is the lake's natural unit, and the task can be re-run or backfilled."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa

from training.core import decision_store as ds
from training.core.config import Settings

TABLES = ("decisions", "label_events")
PART = "part-0.parquet"


@dataclass
class LakeExport:
    """What an export wrote (the same dict shape as the pipeline's reports)."""

    lake: str
    until: str  # days before this one are closed
    days: dict[str, list[str]] = field(default_factory=dict)  # table -> days written
    rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"lake": self.lake, "until": self.until, "days": self.days, "rows": self.rows}


def partition(lake_url: str, table: str, day: date) -> str:
    return f"{lake_url.rstrip('/')}/{table}/day={day.isoformat()}/{PART}"


def _days(conn: sa.Connection, table: str, until: date) -> list[date]:
    """The closed days ``table`` holds rows of."""
    if table == "decisions":
        col = ds.decisions.c.tx_day
        found = conn.execute(sa.select(col).where(col < until).distinct()).scalars()
        return sorted(pd.Timestamp(d).date() for d in found)
    lo, hi = conn.execute(
        sa.select(
            sa.func.min(ds.label_events.c.labelled_at), sa.func.max(ds.label_events.c.labelled_at)
        )
    ).one()
    if lo is None:
        return []
    first, last = pd.Timestamp(lo).date(), min(pd.Timestamp(hi).date(), until - timedelta(days=1))
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def _rows(conn: sa.Connection, table: str, day: date) -> pd.DataFrame:
    if table == "decisions":
        t = ds.decisions
        q = sa.select(t).where(t.c.tx_day == day).order_by(t.c.tx_time, t.c.transaction_id)
    else:
        t = ds.label_events
        start = pd.Timestamp(day, tz="UTC").to_pydatetime()
        q = (
            sa.select(t)
            .where(t.c.labelled_at >= start, t.c.labelled_at < start + timedelta(days=1))
            .order_by(t.c.labelled_at, t.c.event_id)
        )
    frame = pd.DataFrame(
        [dict(r._mapping) for r in conn.execute(q)], columns=[c.name for c in t.columns]
    )
    for c in t.columns:
        if isinstance(c.type, sa.DateTime):
            frame[c.name] = pd.to_datetime(frame[c.name], utc=True)
    if "features" in frame:  # JSON text, as the store keeps it
        frame["features"] = [
            None if f is None else orjson.dumps(f).decode() for f in frame["features"]
        ]
    if "tx_day" in frame:
        frame = frame.drop(columns="tx_day")  # the partition's own column
    return frame


def arrow_schema(table: sa.Table) -> Any:
    """The table's columns as Arrow types (one schema for every day file, even a day whose
    column is all empty); the day column is the partition's."""
    import pyarrow as pa

    def arrow(t: Any) -> Any:
        if isinstance(t, sa.DateTime):
            return pa.timestamp("us", tz="UTC")
        if isinstance(t, sa.BigInteger | sa.Integer):
            return pa.int64()
        if isinstance(t, sa.Float):
            return pa.float64()
        if isinstance(t, sa.Boolean):
            return pa.bool_()
        return pa.string()  # strings, and the JSON column as its text

    return pa.schema([(c.name, arrow(c.type)) for c in table.columns if c.name != "tx_day"])


def _write(frame: pd.DataFrame, table: sa.Table, target: str) -> None:
    """``frame`` to ``target`` through a temporary name (readers never see half a file)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(target)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp"
    data = pa.Table.from_pandas(frame, schema=arrow_schema(table), preserve_index=False)
    with fs.open(tmp, "wb") as f:
        pq.write_table(data, f)
    fs.mv(tmp, path)


def exists(target: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(target)
    return bool(fs.exists(path))


def export(settings: Settings, until: date | None = None, rewrite: bool = False) -> LakeExport:
    """Write every closed day of the decision store not in the lake yet (``rewrite``: every
    closed day). ``until``: the first open day (default: the store clock's day)."""
    from training.core import decision_source

    if not settings.lake_url:
        raise ValueError("FRAUD_LAKE_URL is not set: no lake to write")
    url, lake = settings.decision_db_url, settings.lake_url
    if until is None:
        until = decision_source.store_clock(url, wall=settings.clock == "wall").date()
    out = LakeExport(lake, until.isoformat())
    engine = ds.engine_for(url)
    try:
        with engine.connect() as conn:
            for table in TABLES:
                out.days[table], out.rows[table] = [], 0
                for day in _days(conn, table, until):
                    target = partition(lake, table, day)
                    if not rewrite and exists(target):
                        continue
                    frame = _rows(conn, table, day)
                    if frame.empty:  # a day without label events: nothing to keep
                        continue
                    _write(frame, getattr(ds, table), target)
                    out.days[table].append(day.isoformat())
                    out.rows[table] += len(frame)
    finally:
        engine.dispose()
    return out
