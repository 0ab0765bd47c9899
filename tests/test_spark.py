"""The offline half on Apache Spark, on a real standalone cluster (a master and 2 workers, each
its own JVM): the same features as the local pass, from the same per-day files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import data
from training.core import features, schema
from training.demo.simulate import write_per_day
from training.spark import sources

pytestmark = [pytest.mark.spark, pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def tied_days(small_raw: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small set plus 200 twins: a transaction's customer and terminal at its very time
    (ties in time, which only the stream order breaks), written one file a day."""
    twins = small_raw.sample(200, random_state=1).assign(
        TRANSACTION_ID=lambda d: "twin-" + d[schema.TRANSACTION_ID],
        TX_AMOUNT=lambda d: d[schema.TX_AMOUNT] * 3 + 1,
    )
    out = tmp_path_factory.mktemp("tied") / "transactions"
    write_per_day(schema.normalize(pd.concat([small_raw, twins], ignore_index=True)), out)
    return out


def test_the_feature_pass_on_the_cluster_equals_the_local_one(spark, spark_cluster, tied_days):
    from training.spark.features import features as spark_features

    local_raw = data.load_transactions(tied_days)
    local = features.offline_features(local_raw)
    local.insert(0, schema.TRANSACTION_ID, local_raw[schema.TRANSACTION_ID].to_numpy())
    # rows dealt out at random first: Spark promises no order, the stream order must come back
    read = sources.read_transactions(spark, tied_days).repartition(7)
    remote = spark_features(read).toPandas()
    # it ran on the cluster: the master given, two executors besides the driver
    assert spark.sparkContext.master == spark_cluster.url
    assert spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() == 3
    assert len(remote) == len(local) and remote[schema.TRANSACTION_ID].is_unique
    both = local.merge(remote, on=schema.TRANSACTION_ID, suffixes=("", "_spark"))
    assert len(both) == len(local)
    names = features.feature_names(features.FeatureConfig(), features.has_categoricals(local_raw))
    for name in names:
        a, b = both[name].to_numpy(), both[f"{name}_spark"].to_numpy()
        if a.dtype == object:
            assert (a == b).all(), name
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-9, err_msg=name)
    twins = both[both[schema.TRANSACTION_ID].str.startswith("twin-")]
    assert (twins["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] >= 2).all()  # each sees its tied original


def test_a_window_reads_only_its_days_files(tied_days: Path) -> None:
    every = sources.day_files(tied_days)
    week = sources.day_files(tied_days, date(2018, 4, 10), date(2018, 4, 16))
    assert len(every) == 75 and [sources.file_day(f) for f in week] == [
        date(2018, 4, d) for d in range(10, 17)
    ]
