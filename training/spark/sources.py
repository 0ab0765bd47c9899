"""Transactions into Spark: the per-day parquet files (``YYYY-MM-DD.parquet``, or Hive-style
``day=YYYY-MM-DD/`` folders), pruned to a window of days by their names before anything is
read, normalised as :func:`training.core.schema.normalize` does, each row keeping its place in
its file (the stream order's tie-break, :mod:`training.spark.features`)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from training.core import schema
from training.data import DataError
from training.spark.features import FILE, ROW

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DAY = re.compile(r"(?:^|day=)(\d{4}-\d{2}-\d{2})(?:\.parquet)?$")


def file_day(path: Path) -> date | None:
    """The day a file holds, by its name or its folder's (None: not a per-day file)."""
    for part in (path.name, path.parent.name):
        if m := DAY.search(part):
            return date.fromisoformat(m.group(1))
    return None


def day_files(root: Path, first: date | None = None, last: date | None = None) -> list[Path]:
    """The parquet files under ``root`` whose day is in ``[first, last]``, in stream order (by
    path, as the local loader reads them). A file whose name holds no day is always kept."""
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"no parquet files in {root} (convert once: fraudops convert)")
    keep = []
    for f in files:
        day = file_day(f)
        if day is None or ((first is None or day >= first) and (last is None or day <= last)):
            keep.append(f)
    return keep


def _timestamp(raw: DataFrame, name: str) -> Column:
    """A time column as a timestamp: pandas' nanosecond timestamps arrive as longs (whole
    microseconds kept, as Spark keeps them)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    col = F.col(name)
    if isinstance(raw.schema[name].dataType, LongType):
        col = F.timestamp_micros(F.floor(col / 1000)).cast("timestamp_ntz")
    return col.cast("timestamp_ntz")


def read_transactions(
    spark: SparkSession, root: Path, first: date | None = None, last: date | None = None
) -> DataFrame:
    """The transactions of ``[first, last]`` (every day when None), normalised: ids as
    strings, times as timestamps (UTC), amounts as doubles, labels as integers."""
    from pyspark.sql import functions as F

    files = day_files(root, first, last)
    if not files:
        raise DataError(f"no day files in {root} between {first} and {last}")
    raw = spark.read.parquet(*(str(f.resolve()) for f in files))
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{root}: missing required column(s) {', '.join(missing)}")
    normalised = {
        schema.TRANSACTION_ID: F.col(schema.TRANSACTION_ID).cast("string"),
        schema.TX_DATETIME: _timestamp(raw, schema.TX_DATETIME),
        schema.CUSTOMER_ID: F.col(schema.CUSTOMER_ID).cast("string"),
        schema.TERMINAL_ID: F.col(schema.TERMINAL_ID).cast("string"),
        schema.TX_AMOUNT: F.col(schema.TX_AMOUNT).cast("double"),
        schema.TX_FRAUD: F.col(schema.TX_FRAUD).cast("int"),
        schema.TX_FRAUD_SCENARIO: F.col(schema.TX_FRAUD_SCENARIO).cast("int"),
        **{
            c: F.coalesce(F.col(c).cast("string"), F.lit(schema.UNKNOWN))
            for c in schema.CATEGORICAL_COLUMNS
        },
    }
    # the files' columns in their order, the known ones normalised, the others as they are
    cols = [normalised.get(c, F.col(c)).alias(c) for c in raw.columns]
    cols += [F.col("_metadata.file_path").alias(FILE), F.col("_metadata.row_index").alias(ROW)]
    out = raw.select(*cols)
    if first is not None:
        out = out.where(F.col(schema.TX_DATETIME) >= F.lit(first).cast("timestamp_ntz"))
    if last is not None:
        out = out.where(
            F.col(schema.TX_DATETIME) < F.date_add(F.lit(last), 1).cast("timestamp_ntz")
        )
    return out
