"""Training and evaluation on a small simulated set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import data, evaluate, metrics
from training import train as train_mod
from training.core import schema
from training.train import Candidate

# 600 customers / 1200 terminals / 75 days: ~80k transactions, ~6 % fraud (fewer terminals
# than the handbook, so scenario 2 weighs more). A random ranking has AP ~= prevalence (0.06);
# the quick grid measures 0.56-0.62 AP here. 0.40 is far above chance and leaves room for
# seed noise; a broken feature or leak-free-but-useless model falls below it.
AP_FLOOR = 0.40


@pytest.fixture(scope="module")
def result(small_raw: pd.DataFrame, small_feats: pd.DataFrame) -> train_mod.TrainingResult:
    layout = data.handbook_layout(small_raw)
    grid = {"balancing": ["none", "undersample"], "max_depth": [10], "n_estimators": [50]}
    return train_mod.train(small_raw, small_feats, layout, grid=grid, budget=100)


def test_reaches_ap_floor(result: train_mod.TrainingResult) -> None:
    assert result.test_metrics["ap"] >= AP_FLOOR
    assert result.test_metrics["auc"] > 0.75
    assert 0 < result.test_metrics["cp100"] <= 1


def test_every_candidate_scored_and_chosen_by_the_one_se_rule(
    result: train_mod.TrainingResult,
) -> None:
    assert len(result.search) == 2
    assert all(len(c.folds) >= 2 for c in result.search)
    best = max(result.search, key=lambda c: c.summary()["ap_mean"])
    floor = best.summary()["ap_mean"] - best.ap_standard_error
    pool = [c for c in result.search if c.summary()["ap_mean"] >= floor]
    cheapest = min(pool, key=lambda c: c.summary()["comparisons_mean"])
    assert result.candidate == cheapest.candidate
    assert result.selection["rule"] == "one_se"
    assert result.selection["best_ap_candidate"] == best.candidate.name
    assert all(c.summary()["comparisons_mean"] > 0 for c in result.search)


def _scored(name: str, aps: list[float], comparisons: float) -> train_mod.CandidateResult:
    folds = [
        train_mod.FoldResult(
            np.zeros(1), np.zeros(1), {"ap": ap, "auc": 0.8, "cp100": 0.2}, comparisons
        )
        for ap in aps
    ]
    return train_mod.CandidateResult(Candidate(balancing=name), folds, 1.0)


def test_one_se_rule_takes_the_cheapest_within_one_standard_error() -> None:
    deep = _scored("none", [0.70, 0.72, 0.68, 0.70], 1_500)  # mean 0.700, SE 0.0071
    shallow = _scored("smote", [0.69, 0.71, 0.68, 0.70], 700)  # mean 0.695: inside
    tiny = _scored("undersample", [0.68, 0.69, 0.67, 0.68], 100)  # mean 0.680: outside
    results = [deep, shallow, tiny]
    assert train_mod.select(results, "one_se") is shallow
    assert train_mod.select(results, "best_ap") is deep
    assert train_mod.select([deep, tiny], "one_se") is deep  # nothing cheaper inside
    with pytest.raises(ValueError, match="one_se"):
        train_mod.select(results, "fastest")


def test_forest_comparisons_is_the_mean_path_length() -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=500) > 0).astype(int)
    forest = RandomForestClassifier(
        n_estimators=5, max_depth=6, bootstrap=False, random_state=0
    ).fit(X, y)
    # without bootstrap every tree saw each training row once: the weighted leaf depth is the
    # mean number of internal nodes on a training row's path
    paths = sum(float(np.mean(t.decision_path(X).sum(axis=1) - 1)) for t in forest.estimators_)
    assert train_mod.forest_comparisons(forest) == pytest.approx(paths)
    assert 5 <= paths <= 5 * 6


def test_threshold_respects_review_budget(result: train_mod.TrainingResult) -> None:
    assert 0 < result.threshold < 1
    daily = len(result.test_scores) / 7
    if daily > 100:  # the budget binds: about 100 alerts per day or fewer
        assert (result.test_scores >= result.threshold).sum() / 7 < 200


def test_budget_threshold() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(10_000)
    labels = (rng.random(10_000) < 0.01).astype(int)
    thr = metrics.budget_threshold(scores, labels, n_days=10, budget=100)
    assert (scores >= thr).sum() == 1000


def test_card_precision_removes_detected_cards() -> None:
    days = np.array([0, 0, 1, 1])
    cards = np.array(["a", "b", "a", "c"])
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.9, 0.2])
    # Day 0: top-1 is card a (fraud) -> 1.0; day 1: a already detected, top-1 is c -> 0.0
    assert metrics.card_precision_top_k(days, cards, labels, scores, k=1) == 0.5


def test_works_without_categorical_fields(small_raw: pd.DataFrame) -> None:
    from training.core import features

    plain = small_raw.drop(columns=[schema.TX_CHANNEL, schema.MERCHANT_CATEGORY])
    feats = features.offline_features(plain)
    layout = data.handbook_layout(plain, n_folds=1)
    res = train_mod.train(plain, feats, layout, grid={"n_estimators": [30]})
    assert "MERCHANT_CATEGORY" not in res.feature_columns
    assert res.test_metrics["ap"] >= AP_FLOOR


def test_handbook_evaluation(small_raw: pd.DataFrame, small_feats: pd.DataFrame) -> None:
    report = evaluate.handbook_evaluation(
        small_raw, small_feats, Candidate(n_estimators=30), n_folds=2
    )
    assert len(report["folds"]) == 2
    assert report["summary"]["ap"]["mean"] >= AP_FLOOR
    for key in ("auc", "ap", "cp100", "precision", "recall", "f1", "accuracy"):
        assert set(report["summary"][key]) == {"mean", "std"}
    # Folds are shifted back by 7 days and test windows never overlap.
    starts = [f["test_days"][0] for f in report["folds"]]
    assert starts[0] - starts[1] == 7


def test_evaluation_from_a_train_start(small_raw: pd.DataFrame, small_feats: pd.DataFrame) -> None:
    """--train-start: the first fold trains from that day, the others a week earlier each."""
    from datetime import date, timedelta

    first = small_raw["TX_DATETIME"].min().normalize().date()
    start = first + timedelta(days=30)
    report = evaluate.handbook_evaluation(
        small_raw, small_feats, Candidate(n_estimators=20), n_folds=3, train_start=start
    )
    assert [f["train_days"][0] for f in report["folds"]] == [30, 23, 16]
    assert [f["test_days"][0] for f in report["folds"]] == [44, 37, 30]
    assert report["train_start"] == str(start)
    last = (small_raw["TX_DATETIME"].max().normalize().date() - first).days
    with pytest.raises(data.DataError, match=r"--train-start .*latest possible start"):
        evaluate.handbook_evaluation(
            small_raw,
            small_feats,
            Candidate(n_estimators=20),
            train_start=first + timedelta(days=last - 19),
        )
    with pytest.raises(data.DataError, match="--train-start"):
        evaluate.handbook_evaluation(
            small_raw, small_feats, Candidate(), train_start=date(2000, 1, 1)
        )


def test_evaluation_feature_sets(small_raw: pd.DataFrame, small_feats: pd.DataFrame) -> None:
    base = evaluate.handbook_evaluation(
        small_raw, small_feats, Candidate(n_estimators=30), n_folds=1, feature_set="baseline"
    )
    assert len(base["feature_columns"]) == 15
    assert "MERCHANT_CATEGORY" not in base["feature_columns"]
    with pytest.raises(ValueError, match="feature_set"):
        evaluate.handbook_evaluation(small_raw, small_feats, Candidate(), feature_set="magic")
