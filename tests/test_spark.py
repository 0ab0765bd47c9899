"""The offline half on Apache Spark, on a real standalone cluster (a master and 2 workers, each
its own JVM): the same features as the local pass, from the same per-day files; the decision
lake read with the same label policy."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import data, lake
from training.core import decision_source, features, schema
from training.core.config import Settings
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


def test_a_window_brings_back_its_days_with_the_features_of_the_whole_history(
    spark, tied_days: Path
) -> None:
    """The last 21 days from the cluster (read with the 37 days of history their windows
    reach, not the 75): the local frames' last 21 days, raw and features."""
    from training.spark.window import training_frames

    raw, feats = training_frames(spark, tied_days, keep_days=21)
    local_raw = data.load_transactions(tied_days)
    local = features.offline_features(local_raw)
    since = local_raw[schema.TX_DATETIME].max().normalize() - pd.Timedelta(days=20)
    rows = local_raw[schema.TX_DATETIME] >= since
    pd.testing.assert_frame_equal(raw, local_raw[rows].reset_index(drop=True), check_dtype=False)
    pd.testing.assert_frame_equal(
        feats, local[rows].reset_index(drop=True), check_dtype=False, rtol=0, atol=1e-9
    )


def test_a_sample_on_the_cluster_keeps_the_local_samples_rows_and_the_holdout_scores_alike(
    spark, tied_days: Path
) -> None:
    """The weighted sample drawn on the executors is the local one (same rows, same weights);
    the compiled model scores the window's rows on the cluster as it does here."""
    from training import holdout, sampling
    from training.core import compiled
    from training.spark.window import training_window
    from training.train import Candidate, build_pipeline

    window = training_window(spark, tied_days, keep_days=21, fraction=0.3)
    try:
        local_raw = data.load_transactions(tied_days)
        local = features.offline_features(local_raw)
        since = local_raw[schema.TX_DATETIME].max().normalize() - pd.Timedelta(days=20)
        rows = (local_raw[schema.TX_DATETIME] >= since).to_numpy()
        raw, feats, w = sampling.sample(
            local_raw[rows].reset_index(drop=True), local[rows].reset_index(drop=True), 0.3
        )
        pd.testing.assert_frame_equal(window.raw, raw, check_dtype=False)
        pd.testing.assert_frame_equal(window.feats, feats, check_dtype=False, atol=1e-9)
        assert window.weights is not None
        np.testing.assert_allclose(window.weights, w)
        assert window.warmup is not None and len(window.warmup) == rows.sum()  # 21 < 37 days
        pipe = build_pipeline(Candidate(n_estimators=20, max_depth=6), True)
        pipe.fit(feats, raw[schema.TX_FRAUD], forest__sample_weight=w)
        model = [compiled.compile_pipeline(pipe)]
        first, last = since + pd.Timedelta(days=14), since + pd.Timedelta(days=20)
        remote = window.scorer.score(model, first, last)
        here = holdout.LocalScorer(local_raw, local).score(model, first, last)
        assert len(remote) == len(here) > 0
        key = [holdout.DAY, holdout.CUSTOMER, holdout.LABEL, holdout.score_column(0)]
        pd.testing.assert_frame_equal(
            remote.sort_values(key, ignore_index=True)[key],
            here.sort_values(key, ignore_index=True)[key],
            check_dtype=False,
        )
    finally:
        window.scorer.frame.unpersist()


def test_fraudops_train_with_the_spark_engine_registers_a_model_through_the_gate(
    spark, small_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fraudops train --engine spark` on a weighted sample (in a store of its own): the
    feature pass and the sample on the cluster, the model logged, registered and gated like
    any other, with the metrics of the whole hold-out, scored on the cluster."""
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from training import registry
    from training.cli import app
    from training.core.config import get_settings

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FRAUD_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("FRAUD_SAMPLE_GENUINE", "0.3")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["train", "--engine", "spark", "--data", str(small_data_dir), "--grid", "quick"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "the feature pass on Spark" in result.output and "-> champion" in result.output
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name = 'fraud-detector'")
    run = client.get_run(version.run_id)
    assert run.data.tags["data.engine"] == "spark"
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"
    assert run.data.tags["data.sample_genuine"] == "0.3"
    # the days it trained and tested on: a sample of the handbook layout's 56, not the 75
    full = data.load_transactions(small_data_dir)
    assert int(run.data.params["n_transactions"]) < 0.4 * len(full)
    # the test metrics logged are those of every row of the hold-out
    registry.configure(Settings(mlflow_tracking_uri=uri))
    whole = registry.holdout_metrics(
        f"models:/fraud-detector/{version.version}",
        full,
        features.offline_features(full),
        data.handbook_layout(full).final,
    )
    for key in ("ap", "auc", "cp100"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(whole[key], abs=1e-4), key


def test_spark_reads_the_window_labelled_as_the_store_path_labels_it(
    spark, store_url: str, tmp_path: Path
) -> None:
    """The lake's window on the cluster: partitions pruned, labelled by THE label policy: the
    same rows and labels as the store's own path."""
    from training.spark.lake import read_window

    from .test_lake import _fill

    _fill(store_url)
    settings = Settings(decision_db_url=store_url, lake_url=str(tmp_path / "lake"))
    lake.export(settings, until=date(2018, 4, 10))
    clock = datetime(2018, 4, 9, 12, tzinfo=UTC)  # 04-01 and 04-02 past the 7-day delay
    since = datetime(2018, 4, 2, tzinfo=UTC)
    want = decision_source.load_window(store_url, since, label_delay_days=7, now=clock).raw
    frame = read_window(spark, settings.lake_url or "", since.date(), now=clock)
    got = frame.toPandas().sort_values("TX_DATETIME", ignore_index=True)
    assert list(got["TRANSACTION_ID"]) == list(want["TRANSACTION_ID"])  # 04-01 pruned away
    assert list(got["TX_FRAUD"]) == list(want["TX_FRAUD"])
    assert got.set_index("TRANSACTION_ID")["TX_FRAUD"].to_dict()["tx2-2"] == 1
    assert "tx3-0" not in set(got["TRANSACTION_ID"])  # 04-04: unlabelled, too young
    plan = frame._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [isnotnull(day" in plan and "2018-04-02" in plan


def test_the_retrainings_data_check_counts_the_days_on_the_cluster(spark, tied_days: Path) -> None:
    """`prepare_data` with the Spark engine: the same report as the local pass's, from counts
    made on the cluster; a missing day fails it the same way."""
    from training import pipeline

    local = pipeline.prepare_data(Settings(), tied_days, append_days=0)
    remote = pipeline.prepare_data(Settings(engine="spark"), tied_days, append_days=0)
    assert remote == local and remote.transactions == len(data.load_transactions(tied_days))
    gap = tied_days.parent / "gap"
    gap.mkdir()
    for f in sources.day_files(tied_days):
        if f.stem != "2018-05-01":
            (gap / f.name).symlink_to(f)
    with pytest.raises(pipeline.PipelineError, match="2018-05-01"):
        pipeline.prepare_data(Settings(engine="spark"), gap, append_days=0)
