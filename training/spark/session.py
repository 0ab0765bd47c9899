"""The Spark session the offline half runs in when ``FRAUD_ENGINE=spark``: the settings' master
(a standalone cluster, or ``local[*]``), times in UTC (the feature windows are epoch
milliseconds), Arrow between the JVM and pandas, and the driver reachable on the settings'
address (loopback here)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from training.core.config import Settings
from training.spark.standalone import java_problem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _loopback(master: str) -> bool:
    return master.startswith("local") or "://127.0.0.1:" in master or "://localhost:" in master


def spark_session(settings: Settings, app: str = "fraud-mlops") -> SparkSession:
    """A session on ``settings.spark_master`` (``with spark_session(s) as spark:`` stops it).
    RuntimeError when no JVM can start here."""
    problem = java_problem()
    if problem:
        raise RuntimeError(problem)
    from pyspark.sql import SparkSession

    host = settings.spark_driver_host
    os.environ.setdefault("SPARK_LOCAL_IP", host)
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app)
        .config("spark.driver.host", host)
        .config("spark.driver.bindAddress", host)
        .config("spark.driver.memory", settings.spark_driver_memory)
        # a step's days come back to the driver: bounded by its heap, not Spark's default 1 GB
        .config("spark.driver.maxResultSize", settings.spark_driver_memory)
        .config("spark.executor.memory", settings.spark_executor_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
        # pandas writes nanosecond timestamps, which Spark reads only as longs (sources.py)
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    for key, value in settings.spark_conf.items():  # e.g. Spark-on-Kubernetes' (k8s/spark/)
        builder = builder.config(key, value)
    if _loopback(settings.spark_master):
        # executors on this machine: this interpreter, which has the project installed
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # py4j logs its connections closing at INFO, even from finalizers at interpreter exit
    # (onto closed streams: "--- Logging error ---")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    partitions = settings.spark_shuffle_partitions or 4 * spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    return spark
