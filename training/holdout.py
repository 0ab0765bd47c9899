"""The hold-out scored in full when the training window is a weighted sample or lives on Spark:
every transaction of the test days is scored with the compiled models where the data is
(this process, or the Spark executors: :mod:`training.spark.holdout`), the cards already known
as fraudulent are removed as :func:`training.data.handbook_split` removes them, and the metrics
of :mod:`training.metrics` are computed on every remaining row: exact, not estimated from the
sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from training import data, metrics
from training.core import compiled, schema

ModelFiles = tuple[bytes, compiled.InputSpec]  # a compiled model: ONNX bytes and input spec
DAY, CUSTOMER, LABEL = "day", "customer", "label"


def score_column(i: int) -> str:
    return f"score_{i}"


def scored_batch(
    pdf: pd.DataFrame, models: Sequence[compiled.CompiledModel], customer: str, label: str
) -> pd.DataFrame:
    """One batch of feature rows as (day, customer, label, a score per model): the function
    the local scorer and every Spark executor run."""
    out = pd.DataFrame(
        {
            DAY: pd.to_datetime(pdf[schema.TX_DATETIME]).dt.normalize().to_numpy(),
            CUSTOMER: schema.normalize_id(pdf[customer]).to_numpy(),
            LABEL: pdf[label].to_numpy(dtype=np.int64),
        }
    )
    for i, model in enumerate(models):
        needed = [*model.spec.categorical, *model.spec.numeric]
        out[score_column(i)] = model.predict_proba({c: pdf[c].to_numpy() for c in needed})
    return out


class Scorer(Protocol):
    """Scores every transaction of a day range with compiled models, where the data lives."""

    def score(
        self, models: Sequence[ModelFiles], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        """(day, customer, label, ``score_i`` per model) for every transaction whose day is
        in [first, last]."""
        ...


@dataclass(frozen=True)
class LocalScorer:
    """The full window in this process (a local run that trains on a sample)."""

    raw: pd.DataFrame
    feats: pd.DataFrame

    def score(
        self, models: Sequence[ModelFiles], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        day = self.raw[schema.TX_DATETIME].dt.normalize()
        mask = ((day >= first) & (day <= last)).to_numpy()
        frame = pd.concat(
            [
                self.raw.loc[mask, [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TX_FRAUD]],
                self.feats.loc[mask].drop(columns=[schema.TX_DATETIME], errors="ignore"),
            ],
            axis=1,
        )
        loaded = [compiled.CompiledModel(b, spec) for b, spec in models]
        return scored_batch(frame, loaded, schema.CUSTOMER_ID, schema.TX_FRAUD)


@dataclass(frozen=True)
class Scored:
    """One model's exact hold-out: its metrics, and its scores and labels (the reports')."""

    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray


def exact(
    scorer: Scorer,
    sample_raw: pd.DataFrame,
    split: data.Split,
    models: Sequence[ModelFiles],
    thresholds: Sequence[float | None] = (),
) -> list[Scored]:
    """Each model's metrics on the whole of ``split``'s test rows. ``sample_raw``: the window
    the split's day numbers count from (a sample that keeps every fraud knows the same cards
    as the full window)."""
    origin = sample_raw[schema.TX_DATETIME].dt.normalize().min()
    test_start, test_end = split.test_days
    train_start, train_end = split.train_days
    first = origin + pd.Timedelta(days=test_start)
    scored = scorer.score(models, first, origin + pd.Timedelta(days=test_end - 1))
    days = np.asarray((pd.to_datetime(scored[DAY]) - origin).dt.days, dtype=np.int64)
    known = data.known_cards(
        sample_raw,
        data.day_index(sample_raw),
        train_start,
        train_end - train_start,
        test_end - test_start,
    )
    customers = scored[CUSTOMER].to_numpy()
    keep = np.ones(len(scored), dtype=bool)
    for d, cards in enumerate(known):
        at = days == test_start + d
        keep[at] = ~pd.Series(customers[at]).isin(cards).to_numpy()
    order = np.lexsort((np.arange(len(scored)), days))  # day by day, as a split's rows are
    rows = order[keep[order]]
    labels = scored[LABEL].to_numpy()[rows]
    out = []
    for i in range(len(models)):
        scores = scored[score_column(i)].to_numpy()[rows]
        m = metrics.ranking_metrics(labels, scores, days[rows], customers[rows])
        threshold = thresholds[i] if i < len(thresholds) else None
        if threshold is not None:
            m |= metrics.threshold_metrics(labels, scores, threshold)
        out.append(Scored(m, scores, labels))
    return out
