"""Reason codes: exact tree SHAP contributions of the forest, grouped back to the model's
feature columns, each with a plain-words reason.

The values are exact path-dependent tree SHAP (Lundberg et al.), the ``shap`` package's
TreeExplainer values with ``feature_perturbation="tree_path_dependent"``: no background data,
the trees' own training cover stands in for it. They are computed by
:mod:`training.core.tree_shap` (numba, ~2-3x faster than ``shap``; tested equal to it). The
forest's output is the fraud probability, so the contributions plus the base value (the
forest's mean prediction over its training rows) add up to the probability the model of record
(the scikit-learn pipeline) gives. A one-hot encoded categorical gets the sum of its indicator
columns' contributions (SHAP values are additive).

Shared by the service (``/explain``) and the training run's global picture
(:func:`global_importance`, logged to MLflow).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.core import features
from training.core.compiled import Encoder, input_spec

TOP_K = 5  # reasons an answer gives by default


class UnsupportedModel(ValueError):
    """A model whose exact contributions this module cannot compute (a soft-vote ensemble:
    its average of a probability and a sigmoid is additive in neither)."""


@dataclass(frozen=True)
class Explanations:
    """Contributions of a batch: ``contributions[i, j]`` is feature ``columns[j]``'s share of
    row i's ``output`` above or below ``base_value``, in ``space``: ``probability`` (a
    forest) or ``log_odds`` (boosted trees: their margin, the probability's logit)."""

    base_value: float
    output: np.ndarray  # the model's output per row: the probability, or the margin
    contributions: np.ndarray  # (rows, features)
    columns: list[str]
    space: str = "probability"


class ForestExplainer:
    """Exact tree SHAP of a fitted fraud pipeline (prep -> [sampler] -> model): a random
    forest in probability (:mod:`training.core.tree_shap`), XGBoost in log-odds (its own exact
    TreeSHAP, ``pred_contribs``); UnsupportedModel for a soft-vote ensemble."""

    def __init__(self, pipeline: Any, columns: list[str]) -> None:
        from training.core.tree_shap import FlatForest, LeafPaths

        model = pipeline.named_steps["forest"]
        if hasattr(model, "voting"):
            raise UnsupportedModel(
                "the served model is a soft-vote ensemble: its average of a forest's "
                "probability and boosted trees' sigmoid has no exact additive reason codes"
            )
        self.columns = list(columns)
        self.encoder = Encoder(input_spec(pipeline))
        owners = self.encoder.owners()
        missing = set(owners) - set(self.columns)
        if missing:
            raise ValueError(f"the forest reads columns the model does not list: {missing}")
        # (forest inputs, feature columns): sums the one-hot block of each categorical
        self.group = np.zeros((len(owners), len(self.columns)))
        for i, owner in enumerate(owners):
            self.group[i, self.columns.index(owner)] = 1.0
        self.booster = model.get_booster() if hasattr(model, "get_booster") else None
        self.space = "log_odds" if self.booster is not None else "probability"
        if self.booster is None:
            flat = FlatForest.of(model)
            self.paths = LeafPaths.of(flat)
            self.base_value = flat.base_value
        else:  # the bias column of any row: the margin's expected value
            probe = np.zeros((1, len(owners)), dtype=np.float32)
            self.base_value = float(self._contribs(probe)[0, -1])

    def explain(self, columns: Mapping[str, Any] | pd.DataFrame) -> Explanations:
        """Contributions for named feature columns (arrays, a DataFrame or one row's lists)."""
        X = self.encoder.matrix(columns)
        if len(X) == 0:
            empty = np.zeros((0, len(self.columns)))
            return Explanations(self.base_value, np.zeros(0), empty, self.columns)
        values = self.paths.shap_values(X) if self.booster is None else self._contribs(X)[:, :-1]
        grouped = values @ self.group  # (rows, inputs) -> (rows, columns)
        output = self.base_value + grouped.sum(axis=1)
        return Explanations(self.base_value, output, grouped, self.columns, self.space)

    def _contribs(self, X: np.ndarray) -> np.ndarray:
        """XGBoost's exact path-dependent TreeSHAP in margin units, bias last."""
        from xgboost import DMatrix

        assert self.booster is not None
        return np.asarray(
            self.booster.predict(DMatrix(X), pred_contribs=True), dtype=np.float64
        ).reshape(len(X), -1)


def global_importance(explained: Explanations) -> dict[str, float]:
    """Mean |SHAP| per feature over the explained rows, largest first."""
    mean_abs = np.abs(explained.contributions).mean(axis=0)
    order = np.argsort(-mean_abs)
    return {explained.columns[j]: float(mean_abs[j]) for j in order}


def top_reasons(
    contributions: np.ndarray,
    row: Mapping[str, Any],
    columns: list[str],
    k: int = TOP_K,
    delay_days: int = 7,
) -> list[dict[str, Any]]:
    """The ``k`` largest contributions of one row (by size, either sign) with their values and
    plain-words reasons; ``row`` maps feature name to the value the model scored."""
    order = np.argsort(-np.abs(contributions), kind="stable")[:k]
    out = []
    for j in order:
        name = columns[j]
        value = row[name]
        c = float(contributions[j])
        out.append(
            {
                "feature": name,
                "value": value if isinstance(value, str) else float(value),
                "contribution": c,
                "direction": "raises" if c > 0 else "lowers" if c < 0 else "none",
                "reason": reason(name, row, delay_days),
            }
        )
    return out


_LARGE = re.compile(r"^CUSTOMER_NB_LARGE_TX_(\d+)DAY$")
_WINDOW = re.compile(r"^(CUSTOMER_ID|TERMINAL_ID)_(NB_TX|AVG_AMOUNT|RISK)_(\d+)DAY_WINDOW$")


def _days(n: int) -> str:
    return "day" if n == 1 else f"{n} days"


def _count(n: float, noun: str) -> str:
    k = round(n)
    return f"{k:,} {noun}{'' if k == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def reason(name: str, row: Mapping[str, Any], delay_days: int = 7) -> str:
    """A plain-words account of feature ``name``'s value in ``row`` (the scored vector)."""
    value = row[name]
    if name == "TX_AMOUNT":
        return f"amount {float(value):,.2f}"
    if name == "TX_DURING_WEEKEND":
        return "made at the weekend" if value else "made on a weekday"
    if name == "TX_DURING_NIGHT":
        return "made at night (00:00-06:59 UTC)" if value else "made in the daytime (UTC)"
    if name == "TX_CARD_NOT_PRESENT":
        return "card not present (remote payment)" if value else "card present"
    if name in features.CATEGORICAL_FEATURES:
        return f"merchant category {value!r}"
    if name == "AMOUNT_TO_CUSTOMER_AVG_30DAY":
        if not row.get("CUSTOMER_ID_NB_TX_30DAY_WINDOW", 2) or float(value) == 0:
            return "no amount history for the customer in 30 days"
        return f"amount {float(value):.1f}x the customer's 30-day average"
    if name == "SECONDS_SINCE_PREVIOUS_TX":
        cap = features.FeatureConfig().gap_cap_days * 86_400
        if float(value) >= cap:
            return "no earlier transaction by the customer in the past 30 days"
        return f"{_duration(float(value))} since the customer's previous transaction"
    m = _LARGE.match(name)
    if m:
        cfg = features.FeatureConfig()
        return (
            f"{_count(float(value), 'earlier transaction')} over {cfg.large_factor}x the "
            f"customer's 30-day average in the past {_days(int(m.group(1)))}"
        )
    m = _WINDOW.match(name)
    if m:
        entity, kind, w = m.group(1), m.group(2), int(m.group(3))
        if entity == "CUSTOMER_ID":
            if kind == "NB_TX":
                return f"{_count(value, 'transaction')} by the customer in the past {_days(w)}"
            return f"customer's average amount {float(value):,.2f} over the past {_days(w)}"
        window = f"the {_days(w)} before the last {_days(delay_days)} (labels known)"
        if kind == "NB_TX":
            return f"{_count(value, 'transaction')} at this terminal in {window}"
        n = float(row.get(f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", 0.0))
        frauds = float(value) * n
        return (
            f"{_count(frauds, 'confirmed fraud')} among {_count(n, 'transaction')} "
            f"at this terminal in {window}"
        )
    return f"{name} = {value}"
