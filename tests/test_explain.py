"""Reason codes: exact tree SHAP, grouped to the model's columns, in plain words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import train
from training.core import explain, features
from training.data import handbook_layout


@pytest.fixture(scope="module")
def fitted(small_raw: pd.DataFrame, small_feats: pd.DataFrame):
    """A depth-10 forest with the one-hot merchant category (prep -> sampler -> forest)."""
    layout = handbook_layout(small_raw, n_folds=1)
    columns = features.feature_names(features.FeatureConfig(), True)
    pipe = train.build_pipeline(
        train.Candidate("undersample", n_estimators=40, max_depth=10), categorical=True
    )
    rows = layout.final.train
    pipe.fit(small_feats[columns].iloc[rows], small_raw["TX_FRAUD"].to_numpy()[rows])
    return pipe, columns, small_feats[columns].iloc[layout.final.test]


def test_contributions_plus_base_reproduce_the_probability(fitted) -> None:
    pipe, columns, test = fitted
    explainer = explain.ForestExplainer(pipe, columns)
    frauds = test[pipe.predict_proba(test)[:, 1] > 0.5].head(200)
    sample = pd.concat([test.head(800), frauds])
    got = explainer.explain(sample)
    expected = pipe.predict_proba(sample)[:, 1]
    assert got.contributions.shape == (len(sample), len(columns))
    np.testing.assert_allclose(got.output, expected, rtol=0, atol=1e-6)
    # the base value is the forest's mean prediction: no feature, no contribution
    assert 0.0 < got.base_value < 1.0
    # rows scored above the mean prediction are explained by contributions that raise it
    assert not frauds.empty and got.base_value < 0.5
    assert (got.contributions[-len(frauds) :].sum(axis=1) > 0).all()


def shap_reference(pipe, X: np.ndarray) -> tuple[np.ndarray, float]:
    """The ``shap`` package's TreeExplainer (path-dependent): the fraud class's values."""
    import shap

    oracle = shap.TreeExplainer(
        pipe.named_steps["forest"], feature_perturbation="tree_path_dependent"
    )
    values = np.asarray(oracle.shap_values(X, check_additivity=False))[..., 1]
    return values, float(np.atleast_1d(oracle.expected_value)[-1])


@pytest.mark.parametrize("balancing", ["none", "class_weight"])
def test_the_values_are_shaps_tree_explainer_values(small_raw, small_feats, balancing) -> None:
    """training.core.tree_shap's closed form against the shap package, on forests whose paths
    split a feature several times (deep trees, weighted covers with class_weight)."""
    from training.core.tree_shap import FlatForest, LeafPaths

    layout = handbook_layout(small_raw, n_folds=1)
    columns = features.feature_names(features.FeatureConfig(), True)
    pipe = train.build_pipeline(
        train.Candidate(balancing, n_estimators=15, max_depth=None), categorical=True
    )
    rows = layout.final.train
    pipe.fit(small_feats[columns].iloc[rows], small_raw["TX_FRAUD"].to_numpy()[rows])
    explainer = explain.ForestExplainer(pipe, columns)
    X = explainer.encoder.matrix(small_feats[columns].iloc[layout.final.test].head(300))
    flat = FlatForest.of(pipe.named_steps["forest"])
    paths = LeafPaths.of(flat)
    assert paths.feature.shape[1] < flat.max_depth  # features repeat along paths: merged
    expected, base = shap_reference(pipe, X)
    np.testing.assert_allclose(paths.shap_values(X), expected, rtol=0, atol=1e-12)
    assert flat.base_value == pytest.approx(base, abs=1e-12)


def test_the_one_hot_category_is_one_feature(fitted) -> None:
    pipe, columns, test = fitted
    explainer = explain.ForestExplainer(pipe, columns)
    n_inputs = pipe.named_steps["forest"].n_features_in_
    assert n_inputs > len(columns)  # the merchant category's indicator columns
    got = explainer.explain(test.head(300))
    j = columns.index("MERCHANT_CATEGORY")
    # the grouped column carries the indicators' sum: the total is unchanged by grouping
    raw_fraud, _ = shap_reference(pipe, explainer.encoder.matrix(test.head(300)))
    np.testing.assert_allclose(raw_fraud.sum(axis=1), got.contributions.sum(axis=1), atol=1e-12)
    n_cats = len(explainer.encoder.spec.categorical["MERCHANT_CATEGORY"])
    np.testing.assert_allclose(raw_fraud[:, :n_cats].sum(axis=1), got.contributions[:, j])


def test_an_unseen_category_is_explained_like_the_pipeline_scores_it(fitted) -> None:
    pipe, columns, test = fitted
    explainer = explain.ForestExplainer(pipe, columns)
    odd = test.head(20).copy()
    odd["MERCHANT_CATEGORY"] = "never-seen"
    got = explainer.explain(odd)
    np.testing.assert_allclose(got.output, pipe.predict_proba(odd)[:, 1], atol=1e-6)


def test_global_importance_is_mean_absolute_shap(fitted) -> None:
    pipe, columns, test = fitted
    got = explain.ForestExplainer(pipe, columns).explain(test.head(500))
    imp = explain.global_importance(got)
    assert list(imp) == sorted(imp, key=imp.__getitem__, reverse=True)
    assert set(imp) == set(columns)
    j = columns.index("TX_AMOUNT")
    assert imp["TX_AMOUNT"] == pytest.approx(np.abs(got.contributions[:, j]).mean())


def test_top_reasons_order_sign_and_words(fitted) -> None:
    _, columns, test = fitted
    row = test.iloc[0].to_dict()
    contributions = np.zeros(len(columns))
    contributions[columns.index("AMOUNT_TO_CUSTOMER_AVG_30DAY")] = 0.3
    contributions[columns.index("TERMINAL_ID_RISK_7DAY_WINDOW")] = -0.1
    contributions[columns.index("TX_AMOUNT")] = 0.05
    row.update(
        {
            "AMOUNT_TO_CUSTOMER_AVG_30DAY": 5.08,
            "TERMINAL_ID_RISK_7DAY_WINDOW": 0.075,
            "TERMINAL_ID_NB_TX_7DAY_WINDOW": 40.0,
        }
    )
    got = explain.top_reasons(contributions, row, columns, k=3)
    assert [r["feature"] for r in got] == [
        "AMOUNT_TO_CUSTOMER_AVG_30DAY",
        "TERMINAL_ID_RISK_7DAY_WINDOW",
        "TX_AMOUNT",
    ]
    assert [r["direction"] for r in got] == ["raises", "lowers", "raises"]
    assert got[0]["reason"] == "amount 5.1x the customer's 30-day average"
    assert got[1]["reason"] == (
        "3 confirmed frauds among 40 transactions at this terminal in the 7 days before the "
        "last 7 days (labels known)"
    )


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("TX_AMOUNT", 1234.5, "amount 1,234.50"),
        ("TX_DURING_NIGHT", 1.0, "made at night (00:00-06:59 UTC)"),
        ("TX_DURING_WEEKEND", 0.0, "made on a weekday"),
        ("TX_CARD_NOT_PRESENT", 1.0, "card not present (remote payment)"),
        ("MERCHANT_CATEGORY", "travel", "merchant category 'travel'"),
        ("CUSTOMER_ID_NB_TX_1DAY_WINDOW", 1.0, "1 transaction by the customer in the past day"),
        (
            "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
            12.0,
            "12 transactions by the customer in the past 7 days",
        ),
        (
            "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
            48.123,
            "customer's average amount 48.12 over the past 30 days",
        ),
        (
            "TERMINAL_ID_NB_TX_30DAY_WINDOW",
            310.0,
            "310 transactions at this terminal in the 30 days before the last 7 days "
            "(labels known)",
        ),
        ("SECONDS_SINCE_PREVIOUS_TX", 95.0, "95 s since the customer's previous transaction"),
        (
            "CUSTOMER_NB_LARGE_TX_14DAY",
            2.0,
            "2 earlier transactions over 3x the customer's 30-day average in the past 14 days",
        ),
        ("SECONDS_SINCE_PREVIOUS_TX", 5400.0, "90 min since the customer's previous transaction"),
        (
            "SECONDS_SINCE_PREVIOUS_TX",
            30 * 86_400.0,
            "no earlier transaction by the customer in the past 30 days",
        ),
    ],
)
def test_reason_words(name: str, value: object, words: str) -> None:
    row = {name: value, "CUSTOMER_ID_NB_TX_30DAY_WINDOW": 3.0}
    assert explain.reason(name, row) == words


def test_boosted_trees_are_explained_in_log_odds(small_raw, small_feats) -> None:
    """XGBoost: its own exact TreeSHAP, grouped the same way; base value plus contributions
    give its margin, whose sigmoid is the probability."""
    layout = handbook_layout(small_raw, n_folds=1)
    columns = features.feature_names(features.FeatureConfig(), True)
    pipe = train.build_pipeline(
        train.Candidate(family="xgb", n_estimators=50, boost_depth=5), categorical=True
    )
    rows = layout.final.train
    pipe.fit(small_feats[columns].iloc[rows], small_raw["TX_FRAUD"].to_numpy()[rows])
    test = small_feats[columns].iloc[layout.final.test].head(500)
    got = explain.ForestExplainer(pipe, columns).explain(test)
    assert got.space == "log_odds" and got.contributions.shape == (500, len(columns))
    np.testing.assert_allclose(
        1 / (1 + np.exp(-got.output)), pipe.predict_proba(test)[:, 1], rtol=0, atol=1e-6
    )


def test_an_ensemble_has_no_exact_reason_codes(small_raw, small_feats) -> None:
    columns = features.feature_names(features.FeatureConfig(), True)
    pipe = train.build_pipeline(
        train.Candidate(family="ensemble", n_estimators=10, max_depth=4), categorical=True
    )
    pipe.fit(small_feats[columns].head(5_000), small_raw["TX_FRAUD"].to_numpy()[:5_000])
    with pytest.raises(explain.UnsupportedModel, match="soft-vote"):
        explain.ForestExplainer(pipe, columns)
