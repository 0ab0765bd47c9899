"""The decision lake (:mod:`training.lake`) into Spark: a window of days, its partitions
pruned by their ``day``, each decision joined with its latest label event and labelled by THE
label policy (:func:`training.core.decision_source.label_policy`, run on each partition), as the
raw transaction columns the feature pass takes (:mod:`training.spark.features`)."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

import pandas as pd

from training.core import schema
from training.core.decision_source import as_utc, label_policy, transactions_of
from training.spark.features import FILE, ROW

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame, SparkSession


def _policy(clock: datetime, label_delay_days: int) -> object:
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in frames:
            times = pd.to_datetime(pdf["tx_time"], utc=True)
            labels = pdf["label"].astype(object).where(pdf["label"].notna(), None)
            keep, fraud, _ = label_policy(times, labels, clock, label_delay_days)
            out = transactions_of(pdf, times, fraud.astype("int32"))
            out[FILE], out[ROW] = pdf[FILE], pdf[ROW]
            yield out[keep.to_numpy()]

    return run


def read_window(
    spark: SparkSession,
    lake_url: str,
    since: date,
    until: date | None = None,
    label_delay_days: int = 7,
    now: datetime | None = None,
) -> DataFrame:
    """The lake's decisions of days ``since``..``until`` (inclusive; every later day when
    None), labelled as of ``now`` (default: the latest transaction read, the stream's own
    clock, as :func:`training.core.decision_source.load_window` does)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    lake = lake_url.rstrip("/")
    decisions = spark.read.parquet(f"{lake}/decisions").where(F.col("day") >= F.lit(since))
    if until is not None:
        decisions = decisions.where(F.col("day") <= F.lit(until))
    decisions = decisions.select(
        "*", F.col("_metadata.file_path").alias(FILE), F.col("_metadata.row_index").alias(ROW)
    )
    ranked = spark.read.parquet(f"{lake}/label_events").withColumn(
        "rank",
        F.row_number().over(
            Window.partitionBy("transaction_id").orderBy(
                F.col("labelled_at").desc(), F.col("event_id").desc()
            )
        ),
    )
    latest = ranked.where(F.col("rank") == 1).select(
        "transaction_id", F.col("is_fraud").alias("label")
    )
    rows = decisions.join(latest, "transaction_id", "left")
    if now is None:
        latest_row = rows.agg(F.max("tx_time")).first()
        if latest_row is None or latest_row[0] is None:
            raise ValueError(f"no decisions in the lake at {lake} since {since}")
        now = latest_row[0]
    clock = as_utc(now)
    out = T.StructType(
        [
            T.StructField(schema.TRANSACTION_ID, T.StringType()),
            T.StructField(schema.TX_DATETIME, T.TimestampNTZType()),
            T.StructField(schema.CUSTOMER_ID, T.StringType()),
            T.StructField(schema.TERMINAL_ID, T.StringType()),
            T.StructField(schema.TX_AMOUNT, T.DoubleType()),
            T.StructField(schema.TX_CHANNEL, T.StringType()),
            T.StructField(schema.MERCHANT_CATEGORY, T.StringType()),
            T.StructField(schema.TX_FRAUD, T.IntegerType()),
            T.StructField(FILE, T.StringType()),
            T.StructField(ROW, T.LongType()),
        ]
    )
    return rows.mapInPandas(_policy(clock, label_delay_days), out)  # type: ignore[arg-type]
