"""The training data on Spark (``FRAUD_ENGINE=spark``): the feature pass over the days a step
needs plus the history its windows reach, run across the cluster; only the needed days come
back to the driver, as the local path's frames (raw transactions in stream order, and their
features), so training, the gate and the reports run unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training import sampling
from training.core import schema
from training.core.config import Settings
from training.core.features import MS_PER_DAY, FeatureConfig, feature_names
from training.data import DataError
from training.spark import features as spark_features
from training.spark import sources
from training.spark.holdout import ClusterScorer
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


def process_session(settings: Settings) -> SparkSession:
    """The active session, or a new one on the settings' master that lives as long as this
    process (a CLI command's or a DAG task's): a step's window stays on the executors while
    the step trains and scores its hold-out."""
    import atexit

    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    spark = spark_session(settings)
    atexit.register(spark.stop)
    return spark


def history_days(cfg: FeatureConfig) -> int:
    """Days before the first needed day that its features read (the longest retention)."""
    return math.ceil(max(cfg.customer_retention_ms, cfg.terminal_retention_ms) / MS_PER_DAY)


@dataclass(frozen=True)
class SparkWindow:
    """A step's window from Spark: the frames the driver trains on (the whole window, or its
    weighted sample with ``weights``), the full recent history serving warms up from when
    sampled, and the window's feature rows kept on the executors to score the hold-out."""

    raw: pd.DataFrame
    feats: pd.DataFrame
    weights: np.ndarray | None
    warmup: pd.DataFrame | None
    scorer: ClusterScorer


def training_window(
    spark: SparkSession,
    root: Path,
    keep_days: int | None,
    cfg: FeatureConfig | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    warmup_days: int = 37,
) -> SparkWindow:
    """The last ``keep_days`` days of the per-day files under ``root`` (every day when None)
    with their features, computed on ``spark``: the same frames as
    :func:`training.data.load_transactions` + :func:`training.core.features.offline_features`
    give for those days. With ``fraction`` < 1 only the weighted sample of
    :mod:`training.sampling` comes back (drawn on the executors, weights from the day counts)."""
    from pyspark import StorageLevel
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
    time = out[schema.TX_DATETIME]
    window = out.where(time >= F.lit(keep_from).cast("timestamp_ntz"))
    window = window.persist(StorageLevel.MEMORY_AND_DISK)
    names = feature_names(cfg, categorical)
    inputs = [c for c in read.columns if c not in (spark_features.FILE, spark_features.ROW)]
    weights = warmup = None
    if fraction < 1:
        day = F.date_format(time, "yyyy-MM-dd")
        genuine = {
            r["day"]: int(r["n"])
            for r in window.where(window[schema.TX_FRAUD] != 1)
            .groupBy(day.alias("day"))
            .agg(F.count(F.lit(1)).alias("n"))
            .collect()
        }
        kept = window.mapInPandas(_sampler(fraction, seed), window.schema)
        frame = _ordered(kept.toPandas(), root, keep_from, last)
        labels = frame[schema.TX_FRAUD].to_numpy()
        on = frame[schema.TX_DATETIME].dt.strftime("%Y-%m-%d").to_numpy()
        per_day = sampling.day_weights(genuine, sampling.genuine_per_day(labels, on))
        weights = sampling.row_weights(labels, on, per_day)
        since = F.lit(last - timedelta(days=warmup_days - 1)).cast("timestamp_ntz")
        recent = window.where(time >= since).select(
            *[F.col(spark_features.input_name(c) if c in names else c) for c in read.columns]
        )
        warmup = _raw(_ordered(recent.toPandas(), root, keep_from, last), inputs, names)
    else:
        frame = _ordered(window.toPandas(), root, keep_from, last)
    raw = _raw(frame, inputs, names)
    return SparkWindow(
        raw, frame[names].reset_index(drop=True), weights, warmup, ClusterScorer(window)
    )


def day_counts(spark: SparkSession, root: Path) -> pd.DataFrame:
    """Transactions and frauds a day over every per-day file under ``root``, counted on the
    cluster (what the retraining's data check needs, without the rows)."""
    from pyspark.sql import functions as F

    if not sources.day_files(root):
        raise DataError(f"{root}: the Spark engine reads per-day files (YYYY-MM-DD.parquet)")
    read = sources.read_transactions(spark, root)
    counted = (
        read.groupBy(F.to_date(read[schema.TX_DATETIME]).alias("day"))
        .agg(
            F.count(F.lit(1)).alias("transactions"),
            F.sum(F.when(read[schema.TX_FRAUD] == 1, 1).otherwise(0)).alias("frauds"),
        )
        .toPandas()
    )
    counted["day"] = pd.to_datetime(counted["day"])
    return counted.set_index("day").sort_index()


Batches = Iterator[pd.DataFrame]


def _sampler(fraction: float, seed: int) -> Callable[[Batches], Batches]:
    def run(batches: Batches) -> Batches:
        for pdf in batches:
            ids = pdf[schema.TRANSACTION_ID].to_numpy()
            yield pdf[sampling.keep(pdf[schema.TX_FRAUD].to_numpy(), ids, fraction, seed)]

    return run


def _ordered(frame: pd.DataFrame, root: Path, first: object, last: object) -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"{root}: no transactions from {first} to {last}")
    return frame.sort_values(spark_features.ORDER, kind="stable", ignore_index=True)


def _raw(frame: pd.DataFrame, inputs: list[str], names: list[str]) -> pd.DataFrame:
    raw = pd.DataFrame(
        {c: frame[spark_features.input_name(c) if c in names else c] for c in inputs}
    )
    return schema.normalize(raw)


def training_frames(
    spark: SparkSession, root: Path, keep_days: int | None, cfg: FeatureConfig | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw, features) of :func:`training_window` without a sample."""
    window = training_window(spark, root, keep_days, cfg)
    window.scorer.frame.unpersist()
    return window.raw, window.feats
