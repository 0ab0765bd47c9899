"""Fraud metrics: ROC AUC, average precision, Card Precision@k and threshold metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def card_precision_top_k(
    days: np.ndarray,
    customers: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    k: int = 100,
    weights: np.ndarray | None = None,
) -> float:
    """Handbook CP@k: per day, the k cards with the highest score; precision on cards.

    A card's score and label are its maxima over the day; cards found fraudulent on earlier
    days are removed from later days. Mean over days. With ``weights`` (a weighted sample,
    :mod:`training.sampling`) a genuine card stands for its rows' weight of cards, and the top
    k is counted in weight: an estimate, exact when every weight is 1.
    """
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    frame = pd.DataFrame({"day": days, "card": customers, "y": labels, "s": scores, "w": w})
    detected: set = set()
    precisions = []
    for _, day_df in frame.groupby("day", sort=True):
        day_df = day_df[~day_df["card"].isin(detected)]
        cards = day_df.groupby("card").agg(y=("y", "max"), s=("s", "max"), w=("w", "max"))
        cards["w"] = np.where(cards["y"] == 1, 1.0, cards["w"])  # a fraud card is one card
        ranked = cards.sort_values("s", ascending=False, kind="stable")
        before = ranked["w"].cumsum().to_numpy() - ranked["w"].to_numpy()
        top = ranked[before < k - 1e-9]
        hits = top.index[top["y"] == 1]
        detected.update(hits)
        precisions.append(len(hits) / k)
    return float(np.mean(precisions)) if precisions else float("nan")


def ranking_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    days: np.ndarray,
    customers: np.ndarray,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """AUC, AP (sklearn's average precision) and CP@100; weighted by a sample's ``weights``."""
    single_class = len(np.unique(labels)) < 2
    return {
        "auc": float("nan")
        if single_class
        else float(skm.roc_auc_score(labels, scores, sample_weight=weights)),
        "ap": float("nan")
        if single_class
        else float(skm.average_precision_score(labels, scores, sample_weight=weights)),
        "cp100": card_precision_top_k(days, customers, labels, scores, 100, weights),
    }


def threshold_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of ``score >= threshold``."""
    pred = (scores >= threshold).astype(int)
    w = {"sample_weight": weights}
    return {
        "precision": float(skm.precision_score(labels, pred, zero_division=0, **w)),
        "recall": float(skm.recall_score(labels, pred, zero_division=0, **w)),
        "f1": float(skm.f1_score(labels, pred, zero_division=0, **w)),
        "accuracy": float(skm.accuracy_score(labels, pred, **w)),
    }


def budget_threshold(
    scores: np.ndarray,
    labels: np.ndarray,
    n_days: int,
    budget: int,
    weights: np.ndarray | None = None,
) -> float:
    """Threshold so that on average ``budget`` transactions per day raise an alert (counted
    in a sample's ``weights``).

    When the budget exceeds the daily volume (small data) it cannot bind; the F1-optimal
    threshold is used instead, so the model does not flag everything.
    """
    k = budget * max(n_days, 1)
    if weights is not None:
        order = np.argsort(-scores, kind="stable")
        reach = np.cumsum(np.asarray(weights, dtype=float)[order])
        at = int(np.searchsorted(reach, k - 1e-9))  # the row whose weight reaches k alerts
        k = at + 1 if at < len(order) else len(order) + 1
    ordered = np.sort(scores)[::-1]
    if 0 < k < len(ordered) and ordered[k - 1] > 0:
        return float(
            np.nextafter(ordered[k - 1], np.inf) if ordered[k] == ordered[k - 1] else ordered[k - 1]
        )
    precision, recall, thresholds = skm.precision_recall_curve(
        labels, scores, sample_weight=weights
    )
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def decision_metrics(
    labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray
) -> dict[str, float]:
    """Precision and recall of the decisions taken, AP of the scores behind them (NaN with
    one class only)."""
    y, flagged = np.asarray(labels, dtype=int), np.asarray(decisions, dtype=int)
    single_class = len(np.unique(y)) < 2
    return {
        "precision": float(skm.precision_score(y, flagged, zero_division=0)),
        "recall": float(skm.recall_score(y, flagged, zero_division=0)),
        "ap": float("nan") if single_class else float(skm.average_precision_score(y, scores)),
    }
