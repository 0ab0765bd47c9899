"""The training data on Spark (``FRAUD_ENGINE=spark``): the feature pass over the days a step
needs plus the history its windows reach, run across the cluster; only the needed days come
back to the driver, as the local path's frames (raw transactions in stream order, and their
features), so training, the gate and the reports run unchanged."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from training.core import schema
from training.core.config import Settings
from training.core.features import MS_PER_DAY, FeatureConfig, feature_names
from training.data import DataError
from training.spark import features as spark_features
from training.spark import sources
from training.spark.session import spark_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@contextmanager
def session_for(settings: Settings) -> Iterator[SparkSession]:
    """The active session if there is one (left running), else a new one on the settings'
    master, stopped afterwards."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    spark = spark_session(settings)
    try:
        yield spark
    finally:
        spark.stop()


def history_days(cfg: FeatureConfig) -> int:
    """Days before the first needed day that its features read (the longest retention)."""
    return math.ceil(max(cfg.customer_retention_ms, cfg.terminal_retention_ms) / MS_PER_DAY)


def training_frames(
    spark: SparkSession, root: Path, keep_days: int | None, cfg: FeatureConfig | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw, features) of the last ``keep_days`` days of the per-day files under ``root``
    (every day when None), computed on ``spark``: the same frames as
    :func:`training.data.load_transactions` + :func:`training.core.features.offline_features`
    give for those days."""
    from pyspark.sql import functions as F

    cfg = cfg or FeatureConfig()
    days = sorted({d for f in sources.day_files(root) if (d := sources.file_day(f))})
    if not days:
        raise DataError(f"{root}: the Spark engine reads per-day files (YYYY-MM-DD.parquet)")
    last = days[-1]
    keep_from = last - timedelta(days=keep_days - 1) if keep_days else days[0]
    read = sources.read_transactions(spark, root, keep_from - timedelta(days=history_days(cfg)))
    categorical = all(c in read.columns for c in schema.CATEGORICAL_COLUMNS)
    out = spark_features.features(read, cfg, order=True)
    frame = out.where(out[schema.TX_DATETIME] >= F.lit(keep_from).cast("timestamp_ntz")).toPandas()
    if frame.empty:
        raise DataError(f"{root}: no transactions from {keep_from} to {last}")
    frame = frame.sort_values(spark_features.ORDER, kind="stable", ignore_index=True)
    names = feature_names(cfg, categorical)
    inputs = [c for c in read.columns if c not in (spark_features.FILE, spark_features.ROW)]
    raw = pd.DataFrame(
        {c: frame[spark_features.input_name(c) if c in names else c] for c in inputs}
    )
    return schema.normalize(raw), frame[names].reset_index(drop=True)
