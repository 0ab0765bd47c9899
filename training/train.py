"""Training: an imbalanced-learn pipeline, chosen by prequential validation AP and serving cost.

Candidates cross the class-balancing choice with the forest's main hyper-parameters; each is
fitted on every prequential fold's training window and scored on its test window. The winner
(:func:`select`: by default the cheapest to serve within one standard error of the best AP)
is refitted on the final training window; the decision threshold comes from the winner's
validation scores and the daily review budget.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import OneHotEncoder

from training import metrics
from training.core import features, schema
from training.data import Layout, Split, day_index

BALANCING = ("none", "class_weight", "undersample", "smote")
# Model families: a random forest (the default), gradient-boosted trees (XGBoost), and the
# soft vote of the two (their probabilities averaged). The pipeline's model step keeps the
# name "forest" whatever the family (the registered pipelines are read by that name).
FAMILIES = ("rf", "xgb", "ensemble")


@dataclass(frozen=True)
class Candidate:
    """One point of the search: a model family, a balancing strategy and hyper-parameters
    (``max_depth`` is the forest's; boosted trees take ``boost_depth``)."""

    balancing: str = "none"
    n_estimators: int = 100
    max_depth: int | None = 20
    min_samples_leaf: int = 1
    max_features: str | float = "sqrt"
    family: str = "rf"
    boost_depth: int = 6
    learning_rate: float = 0.1

    @property
    def name(self) -> str:
        forest = (
            f"{self.balancing}-t{self.n_estimators}-d{self.max_depth}"
            f"-l{self.min_samples_leaf}-f{self.max_features}"
        )
        boost = f"t{self.n_estimators}-d{self.boost_depth}-lr{self.learning_rate:g}"
        if self.family == "rf":
            return forest
        if self.family == "xgb":
            return f"xgb-{self.balancing}-{boost}"
        return f"ensemble-{forest}+{boost}"


GRIDS: dict[str, dict[str, list[Any]]] = {
    "quick": {"balancing": ["none", "class_weight"], "max_depth": [10, 20]},
    "standard": {
        "balancing": list(BALANCING),
        "max_depth": [10, 20],
        "min_samples_leaf": [1],
    },
    "full": {
        "balancing": list(BALANCING),
        "max_depth": [10, 20, None],
        "min_samples_leaf": [1, 5],
        "n_estimators": [100, 200],
    },
}
# Boosted and ensemble candidates the standard and full grids add to their forests.
BOOSTED: dict[str, list[dict[str, Any]]] = {
    "standard": [
        {"family": "xgb", "n_estimators": 200, "boost_depth": 4, "learning_rate": 0.1},
        {"family": "xgb", "n_estimators": 200, "boost_depth": 6, "learning_rate": 0.1},
        {"family": "ensemble", "n_estimators": 100, "max_depth": 10, "boost_depth": 4},
    ],
    "full": [
        {"family": "xgb", "n_estimators": n, "boost_depth": d, "learning_rate": lr}
        for n, d, lr in itertools.product([200, 400], [4, 6], [0.05, 0.1])
    ]
    + [
        {"family": "ensemble", "n_estimators": 100, "max_depth": md, "boost_depth": 4}
        for md in (10, 20)
    ],
}


def candidates(grid: str | dict[str, list[Any]]) -> list[Candidate]:
    """Expand a named grid (quick, standard, full) or an explicit one into candidates; the
    standard and full grids add boosted-tree and ensemble candidates (:data:`BOOSTED`)."""
    spec = GRIDS[grid] if isinstance(grid, str) else grid
    keys = list(spec)
    out = [
        Candidate(**dict(zip(keys, vals, strict=True)))
        for vals in itertools.product(*spec.values())
    ]
    if isinstance(grid, str):
        out += [Candidate(**kw) for kw in BOOSTED.get(grid, [])]
    return out


def build_pipeline(c: Candidate, categorical: bool, seed: int = 0) -> Pipeline:
    """Preprocessing (one-hot for categorical fields) + optional sampler + random forest."""
    cat_cols = list(features.CATEGORICAL_FEATURES) if categorical else []
    prep = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat_cols)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    sampler: Any = "passthrough"
    if c.balancing == "undersample":
        sampler = RandomUnderSampler(sampling_strategy=0.1, random_state=seed)
    elif c.balancing == "smote":
        sampler = SMOTE(sampling_strategy=0.1, random_state=seed)
    elif c.balancing not in BALANCING:
        raise ValueError(f"unknown balancing {c.balancing!r}; choose one of {BALANCING}")
    return Pipeline([("prep", prep), ("sampler", sampler), ("forest", build_model(c, seed))])


def build_model(c: Candidate, seed: int = 0) -> Any:
    """The candidate's classifier: a random forest, XGBoost, or their soft vote."""
    if c.family not in FAMILIES:
        raise ValueError(f"unknown model family {c.family!r}; choose one of {FAMILIES}")
    forest = RandomForestClassifier(
        n_estimators=c.n_estimators,
        max_depth=c.max_depth,
        min_samples_leaf=c.min_samples_leaf,
        max_features=c.max_features,
        class_weight="balanced_subsample" if c.balancing == "class_weight" else None,
        n_jobs=-1,
        random_state=seed,
    )
    if c.family == "rf":
        return forest
    if c.balancing == "class_weight":
        raise ValueError(
            "balancing class_weight is for random forests; boosted and ensemble candidates take "
            "none, undersample or smote"
        )
    from xgboost import XGBClassifier

    boosted = XGBClassifier(
        n_estimators=c.n_estimators if c.family == "xgb" else 200,
        max_depth=c.boost_depth,
        learning_rate=c.learning_rate,
        tree_method="hist",
        subsample=0.8,
        colsample_bytree=0.8,
        n_jobs=-1,
        random_state=seed,
    )
    if c.family == "xgb":
        return boosted
    from sklearn.ensemble import VotingClassifier

    return VotingClassifier(
        [("rf", forest), ("xgb", boosted)], voting="soft", flatten_transform=False
    )


@dataclass
class FoldResult:
    scores: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]
    comparisons: float  # serving cost: see model_comparisons
    weights: np.ndarray | None = None  # a weighted sample's, for the test rows


def model_comparisons(model: Any) -> float:
    """Expected threshold comparisons for one prediction, whatever the family: a forest's
    (:func:`forest_comparisons`), boosted trees' (:func:`boosted_comparisons`) or the sum of an
    ensemble's members'."""
    members = getattr(model, "estimators_", None)
    if hasattr(model, "voting") and members is not None:
        return float(sum(model_comparisons(m) for m in members))
    if hasattr(model, "get_booster"):
        return boosted_comparisons(model)
    return forest_comparisons(model)


def boosted_comparisons(model: Any) -> float:
    """XGBoost's expected comparisons: per tree, the depth of the leaf a training sample
    reaches weighted by the leaves' cover (hessian mass), summed over trees."""
    trees = model.get_booster().trees_to_dataframe()
    total = 0.0
    for _, tree in trees.groupby("Tree", sort=False):
        depth = {str(tree["ID"].iloc[0]): 0}
        for node_id, yes, no, feature in zip(tree["ID"], tree["Yes"], tree["No"], tree["Feature"],
                                             strict=True):  # fmt: skip
            if feature != "Leaf":  # children come after their parent in the dump
                depth[str(yes)] = depth[str(no)] = depth[str(node_id)] + 1
        leaves = tree[tree["Feature"] == "Leaf"]
        weight = leaves["Cover"].to_numpy(dtype=float)
        d = np.array([depth[str(i)] for i in leaves["ID"]], dtype=float)
        total += float(np.sum(d * weight) / np.sum(weight)) if weight.sum() > 0 else 0.0
    return total


def forest_comparisons(forest: Any) -> float:
    """Expected threshold comparisons for one prediction of a fitted forest: per tree, the
    depth of the leaf a training sample reaches, weighted by the samples each leaf holds,
    summed over trees. What a tree walk costs at serving time (ONNX Runtime's time per row
    follows it, not the node count: shallower trees with as many nodes walk faster)."""
    total = 0.0
    for est in forest.estimators_:
        tree = est.tree_
        left, right = tree.children_left, tree.children_right
        depth = np.zeros(tree.node_count, dtype=np.int64)
        for node in range(tree.node_count):  # children always come after their parent
            if left[node] != -1:
                depth[left[node]] = depth[right[node]] = depth[node] + 1
        leaves = left == -1
        weight = tree.weighted_n_node_samples[leaves]
        total += float(np.sum(depth[leaves] * weight) / np.sum(weight))
    return total


@dataclass
class CandidateResult:
    candidate: Candidate
    folds: list[FoldResult]
    fit_seconds: float

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in ("auc", "ap", "cp100"):
            vals = np.array([f.metrics[key] for f in self.folds], dtype=float)
            out[f"{key}_mean"] = float(np.nanmean(vals))
            out[f"{key}_std"] = float(np.nanstd(vals))
        out["comparisons_mean"] = float(np.mean([f.comparisons for f in self.folds]))
        out["fit_seconds"] = self.fit_seconds
        return out

    @property
    def ap_standard_error(self) -> float:
        """Standard error of the mean validation AP over the folds (0 with one fold)."""
        aps = np.array([f.metrics["ap"] for f in self.folds], dtype=float)
        aps = aps[~np.isnan(aps)]
        return float(np.std(aps) / np.sqrt(len(aps))) if len(aps) > 1 else 0.0

    @property
    def ap_floor(self) -> float:
        """The one-standard-error rule's floor when this candidate has the best AP."""
        return float(np.nan_to_num(self.summary()["ap_mean"], nan=-1.0)) - self.ap_standard_error


SELECTION_RULES = ("one_se", "best_ap")


def select(results: list[CandidateResult], rule: str = "one_se") -> CandidateResult:
    """The winning candidate. ``best_ap``: the best mean validation AP (Card Precision@100
    breaks ties). ``one_se``: of the candidates whose mean AP is within one standard error of
    that best, the cheapest to serve (fewest expected comparisons a prediction; the better AP
    breaks ties) — the one-standard-error rule of CART, with serving cost as the complexity."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown model selection {rule!r}; choose one of {SELECTION_RULES}")

    def ap(r: CandidateResult) -> float:
        return float(np.nan_to_num(r.summary()["ap_mean"], nan=-1.0))

    best = max(results, key=lambda r: (ap(r), np.nan_to_num(r.summary()["cp100_mean"], nan=-1.0)))
    if rule == "best_ap":
        return best
    pool = [r for r in results if ap(r) >= best.ap_floor]
    return min(pool, key=lambda r: (r.summary()["comparisons_mean"], -ap(r)))


def fit_and_score(
    c: Candidate,
    feats: pd.DataFrame,
    raw: pd.DataFrame,
    split: Split,
    categorical: bool,
    days: np.ndarray,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> tuple[Pipeline, FoldResult]:
    """Fit on the split's training rows, score its test rows. With a weighted sample's
    ``weights`` (:mod:`training.sampling`) the fit and the metrics are weighted; a candidate
    whose balancing sets the class ratio itself (class_weight, undersample, smote) fits
    unweighted, as the sample keeps every fraud and a uniform share of each day's genuine."""
    y = raw[schema.TX_FRAUD].to_numpy()
    if len(np.unique(y[split.train])) < 2:
        raise ValueError(
            f"training window days {split.train_days} holds a single class; need frauds and "
            "genuine transactions"
        )
    pipe = build_pipeline(c, categorical, seed)
    fit: dict[str, Any] = {}
    if weights is not None and c.balancing == "none":
        fit["forest__sample_weight"] = weights[split.train]
    pipe.fit(feats.iloc[split.train], y[split.train], **fit)
    scores = pipe.predict_proba(feats.iloc[split.test])[:, 1]
    labels = y[split.test]
    w = None if weights is None else weights[split.test]
    m = metrics.ranking_metrics(
        labels, scores, days[split.test], raw[schema.CUSTOMER_ID].to_numpy()[split.test], w
    )
    return pipe, FoldResult(scores, labels, m, model_comparisons(pipe.named_steps["forest"]), w)


@dataclass
class TrainingResult:
    """Everything a training run produces, ready to log."""

    pipeline: Pipeline
    candidate: Candidate
    threshold: float
    feature_columns: list[str]
    categorical: bool
    search: list[CandidateResult]
    test_scores: np.ndarray
    test_labels: np.ndarray
    test_metrics: dict[str, float]
    data_window: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)  # rule, best-AP candidate, floor

    def model_info(self) -> dict[str, Any]:
        """What serving needs besides the pipeline (stored with the model)."""
        return {
            "threshold": self.threshold,
            "feature_columns": self.feature_columns,
            "categorical": self.categorical,
            "feature_set_version": features.FEATURE_SET_VERSION,
            "feature_config": asdict(features.FeatureConfig()),
            "candidate": asdict(self.candidate),
            "data_window": self.data_window,
        }


def train(
    raw: pd.DataFrame,
    feats: pd.DataFrame,
    layout: Layout,
    grid: str | dict[str, list[Any]] = "standard",
    budget: int = 100,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    selection: str = "one_se",
    weights: np.ndarray | None = None,
) -> TrainingResult:
    """Prequential search, choice of the winner by ``selection`` (see :func:`select`), refit
    of the winner on the final window, hold-out evaluation. ``weights``: the rows are a
    weighted sample (:mod:`training.sampling`); fits, metrics and the threshold use them."""
    say = progress or (lambda _m: None)
    categorical = features.has_categoricals(raw)
    columns = features.feature_names(features.FeatureConfig(), categorical)
    X = feats[columns]
    days = day_index(raw)
    results: list[CandidateResult] = []
    cands = candidates(grid)
    t_search = time.perf_counter()
    for i, cand in enumerate(cands):
        t0 = time.perf_counter()
        folds = []
        for j, split in enumerate(layout.folds):
            say(f"candidate {i + 1}/{len(cands)} {cand.name} fold {j + 1}/{len(layout.folds)}")
            folds.append(fit_and_score(cand, X, raw, split, categorical, days, seed, weights)[1])
        results.append(CandidateResult(cand, folds, time.perf_counter() - t0))
    search_s = time.perf_counter() - t_search
    best = select(results, selection)
    top = select(results, "best_ap")
    chosen = {
        "rule": selection,
        "best_ap_candidate": top.candidate.name,
        "ap_floor": top.ap_floor,
    }
    val_scores = np.concatenate([f.scores for f in best.folds])
    val_labels = np.concatenate([f.labels for f in best.folds])
    n_val_days = sum(s.test_days[1] - s.test_days[0] for s in layout.folds)
    val_weights = None if weights is None else np.concatenate([f.weights for f in best.folds])
    threshold = metrics.budget_threshold(val_scores, val_labels, n_val_days, budget, val_weights)
    say(f"refitting {best.candidate.name} on the final training window")
    t0 = time.perf_counter()
    pipe, final = fit_and_score(
        best.candidate, X, raw, layout.final, categorical, days, seed, weights
    )
    fit_s = time.perf_counter() - t0
    test_metrics = {
        **final.metrics,
        **metrics.threshold_metrics(final.labels, final.scores, threshold, final.weights),
    }
    start = raw[schema.TX_DATETIME].dt.normalize().min()
    window = {
        "data_start": str(raw[schema.TX_DATETIME].min()),
        "data_end": str(raw[schema.TX_DATETIME].max()),
        "train_start": str((start + pd.Timedelta(days=layout.final.train_days[0])).date()),
        "train_end": str((start + pd.Timedelta(days=layout.final.train_days[1] - 1)).date()),
        "test_start": str((start + pd.Timedelta(days=layout.final.test_days[0])).date()),
        "test_end": str((start + pd.Timedelta(days=layout.final.test_days[1] - 1)).date()),
    }
    return TrainingResult(
        pipe,
        best.candidate,
        threshold,
        columns,
        categorical,
        results,
        final.scores,
        final.labels,
        test_metrics,
        window,
        {"search_seconds": search_s, "final_fit_seconds": fit_s},
        chosen,
    )
