"""The training window's weighted sample (every fraud, a share of each day's genuine, weighted
back), the weighted metrics, and training on a sample: its hold-out is still scored in full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import data, metrics, pipeline, registry, sampling
from training.core import features, schema
from training.core.config import Settings


def test_a_sample_keeps_every_fraud_and_weighs_each_days_genuine_back(
    small_raw: pd.DataFrame, small_feats: pd.DataFrame
) -> None:
    raw, feats, w = sampling.sample(small_raw, small_feats, 0.2)
    fraud = small_raw[schema.TX_FRAUD] == 1
    assert set(raw.loc[raw[schema.TX_FRAUD] == 1, schema.TRANSACTION_ID]) == set(
        small_raw.loc[fraud, schema.TRANSACTION_ID]
    )
    share = (raw[schema.TX_FRAUD] == 0).sum() / (~fraud).sum()
    assert 0.18 < share < 0.22
    # each day's genuine weight is that day's genuine count; a fraud weighs 1
    day = raw[schema.TX_DATETIME].dt.normalize()
    weighed = (
        pd.Series(w[raw[schema.TX_FRAUD].to_numpy() == 0])
        .groupby(day[raw[schema.TX_FRAUD] == 0].to_numpy())
        .sum()
    )
    counts = small_raw[~fraud].groupby(small_raw[schema.TX_DATETIME].dt.normalize()).size()
    np.testing.assert_allclose(weighed.sort_index().to_numpy(), counts.sort_index().to_numpy())
    assert (w[raw[schema.TX_FRAUD].to_numpy() == 1] == 1).all()
    # rows stay aligned and in stream order
    assert raw[schema.TX_DATETIME].is_monotonic_increasing
    pd.testing.assert_frame_equal(
        feats,
        small_feats.loc[
            small_raw[schema.TRANSACTION_ID].isin(raw[schema.TRANSACTION_ID])
        ].reset_index(drop=True),
    )


def test_which_rows_a_sample_keeps_depends_on_the_id_and_the_seed_only() -> None:
    ids = np.arange(10_000)
    labels = np.zeros(len(ids), dtype=int)
    a = sampling.keep(labels, ids, 0.3)
    assert (a == sampling.keep(labels, ids.astype(str), 0.3)).all()  # 12 and "12": one id
    assert (a == sampling.keep(labels[::-1], ids[::-1], 0.3)[::-1]).all()  # not the row's place
    assert (a != sampling.keep(labels, ids, 0.3, seed=1)).any()
    assert sampling.keep(labels, ids, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        sampling.keep(labels, ids, 0.0)


def test_a_row_of_weight_two_counts_as_the_row_twice() -> None:
    rng = np.random.default_rng(3)
    n = 400
    labels = (rng.random(n) < 0.1).astype(int)
    scores = np.round(rng.random(n) * 0.5 + labels * 0.3, 2)  # ties on purpose
    days = rng.integers(0, 4, n)
    cards = np.arange(n).astype(str)
    twice = np.flatnonzero((labels == 0) & (rng.random(n) < 0.5))
    w = np.ones(n)
    w[twice] = 2.0
    # the same data with those rows written out twice (as distinct cards: a genuine card of
    # weight 2 stands for two cards)
    dup_cards = np.concatenate([cards, np.char.add(cards[twice], "-twin")])
    dup = {
        "labels": np.concatenate([labels, labels[twice]]),
        "scores": np.concatenate([scores, scores[twice]]),
        "days": np.concatenate([days, days[twice]]),
    }
    weighted = metrics.ranking_metrics(labels, scores, days, cards, w)
    written = metrics.ranking_metrics(dup["labels"], dup["scores"], dup["days"], dup_cards)
    assert weighted["ap"] == pytest.approx(written["ap"])
    assert weighted["auc"] == pytest.approx(written["auc"])
    for k in (5, 20):
        assert metrics.card_precision_top_k(days, cards, labels, scores, k, w) == pytest.approx(
            metrics.card_precision_top_k(dup["days"], dup_cards, dup["labels"], dup["scores"], k)
        )
    assert metrics.budget_threshold(scores, labels, 4, 10, w) == metrics.budget_threshold(
        dup["scores"], dup["labels"], 4, 10
    )
    assert metrics.threshold_metrics(labels, scores, 0.5, w) == pytest.approx(
        metrics.threshold_metrics(dup["labels"], dup["scores"], 0.5)
    )


def test_training_on_a_sample_reports_the_whole_holdout_and_warms_serving_from_everything(
    small_data_dir: Path, tmp_path: Path
) -> None:
    """FRAUD_SAMPLE_GENUINE=0.2 on the local engine: the model trains on the sample, and the
    test metrics it logs and the gate uses are those of the whole hold-out (the same as
    scoring every row of it with the registered pipeline); serving's warm-up history is the
    full one."""
    from mlflow.tracking import MlflowClient

    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        mlflow_artifact_root=tmp_path / "artifacts",
        sample_genuine=0.2,
    )
    loaded = pipeline.load_data(settings, small_data_dir)
    full = data.load_transactions(small_data_dir)
    assert len(loaded.raw) < 0.3 * len(full) and loaded.weights is not None
    trained = pipeline.train_candidate(settings, small_data_dir, grid="quick", loaded=loaded)
    deployed = pipeline.deploy_candidate(settings, trained.version, small_data_dir, loaded=loaded)
    assert deployed.promoted
    uri = f"models:/{settings.registered_model}/{trained.version}"
    whole = registry.holdout_metrics(
        uri, full, features.offline_features(full), data.handbook_layout(full).final
    )
    for key in ("ap", "auc", "cp100"):
        assert trained.test_metrics[key] == pytest.approx(whole[key], abs=1e-4), key
        assert deployed.candidate_metrics[key] == pytest.approx(whole[key], abs=1e-4), key
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.tags["data.sample_genuine"] == "0.2"
    assert int(run.data.params["n_transactions"]) == len(loaded.raw)
    warm = pd.read_parquet(
        registry.mlflow.artifacts.download_artifacts(
            run_id=trained.run_id, artifact_path=registry.WARMUP_ARTIFACT
        )
    )
    assert len(warm) == len(registry.warmup_history(full))
