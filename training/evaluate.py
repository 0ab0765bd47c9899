"""The handbook evaluation protocol over prequential folds (mean ± std of every metric)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from training import data, metrics
from training.core import features, schema
from training.train import Candidate, fit_and_score

FEATURE_SETS = ("full", "baseline", "no-categorical")


def handbook_evaluation(
    raw: pd.DataFrame,
    feats: pd.DataFrame,
    candidate: Candidate,
    n_folds: int = 4,
    budget: int = 100,
    model_uri: str | None = None,
    feature_set: str = "full",
    progress: Callable[[str], None] | None = None,
    train_start: date | None = None,
) -> dict[str, Any]:
    """Train 7 days, delay 7, test 7; folds shifted back 7 days from the end of the data, or
    from ``train_start`` (the first fold's first training day, as the handbook gives its
    periods: 2018-08-15, then 08-08, 08-01, 07-25).

    Without ``model_uri`` a fresh pipeline is trained per fold. Threshold metrics use the
    model's stored threshold when a model is given, otherwise the top ``budget`` scores of
    each test day (an alert budget needs no labels, so it is a fair per-day policy).
    ``feature_set`` compares feature choices: ``full``, ``baseline`` (the handbook's 15) or
    ``no-categorical``.
    """
    say = progress or (lambda _m: None)
    days = data.day_index(raw)
    last = int(days.max())
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, not {feature_set!r}")
    categorical = features.has_categoricals(raw) and feature_set == "full"
    cfg = features.FeatureConfig(extras=feature_set != "baseline")
    columns = features.feature_names(cfg, categorical)
    customers = raw[schema.CUSTOMER_ID].to_numpy()
    y = raw[schema.TX_FRAUD].to_numpy()
    model = threshold = None
    if model_uri:
        import mlflow

        from training import registry

        model = mlflow.sklearn.load_model(model_uri)
        meta = registry.model_metadata(model_uri)
        columns, threshold = meta["feature_columns"], float(meta["threshold"])
    folds: list[dict[str, Any]] = []
    train_days = delay_days = test_days = 7  # the handbook's protocol
    span = train_days + delay_days + test_days
    first = last - span + 1  # the last test week ends the data
    if train_start is not None:
        first = first_day_of(raw, train_start, span, last)
    splits = data.prequential_splits(raw, days, first, n_folds, train_days, delay_days, test_days)
    for k, split in enumerate(splits):
        say(f"fold {k + 1}/{n_folds}")
        t0 = time.perf_counter()
        if model is None:
            _, res = fit_and_score(candidate, feats[columns], raw, split, categorical, days)
            scores, labels, ranking = res.scores, res.labels, res.metrics
        else:
            scores = model.predict_proba(feats.iloc[split.test][columns])[:, 1]
            labels = y[split.test]
            ranking = metrics.ranking_metrics(
                labels, scores, days[split.test], customers[split.test]
            )
        if threshold is None:
            flagged = _top_per_day(scores, days[split.test], budget)
            thr_metrics = metrics.threshold_metrics(labels, flagged.astype(float), 0.5)
        else:
            thr_metrics = metrics.threshold_metrics(labels, scores, threshold)
        folds.append(
            {
                "fold": k,
                "train_days": split.train_days,
                "test_days": split.test_days,
                "n_test": len(split.test),
                "seconds": time.perf_counter() - t0,
                **ranking,
                **thr_metrics,
            }
        )
    if not folds:
        raise data.DataError(f"data covers {last + 1} days; the protocol needs at least 21")
    keys = ["auc", "ap", "cp100", "precision", "recall", "f1", "accuracy"]
    summary = {
        key: {
            "mean": float(np.nanmean([float(f[key]) for f in folds])),
            "std": float(np.nanstd([float(f[key]) for f in folds])),
        }
        for key in keys
    }
    return {
        "protocol": "handbook",
        "candidate": asdict(candidate) if model_uri is None else None,
        "model_uri": model_uri,
        "budget_per_day": budget,
        "train_start": str(train_start) if train_start else None,
        "feature_set": feature_set if model_uri is None else "model",
        "feature_columns": columns,
        "folds": folds,
        "summary": summary,
    }


def first_day_of(raw: pd.DataFrame, train_start: date, span: int, last: int) -> int:
    """The day index of ``train_start``; DataError unless its fold fits inside the data."""
    start = raw[schema.TX_DATETIME].min().normalize()
    first = (pd.Timestamp(train_start) - start).days
    end = (start + pd.Timedelta(days=last)).date()
    if first < 0 or first + span - 1 > last:
        raise data.DataError(
            f"--train-start {train_start}: the fold's {span} days (train, delay, test) must lie "
            f"inside the data, {start.date()} to {end} (latest possible start "
            f"{(start + pd.Timedelta(days=last - span + 1)).date()})"
        )
    return first


def _top_per_day(scores: np.ndarray, days: np.ndarray, budget: int) -> np.ndarray:
    """Flag the ``budget`` highest scores of each day."""
    flagged = np.zeros(len(scores), dtype=bool)
    for d in np.unique(days):
        rows = np.flatnonzero(days == d)
        top = rows[np.argsort(-scores[rows], kind="stable")[:budget]]
        flagged[top] = True
    return flagged
