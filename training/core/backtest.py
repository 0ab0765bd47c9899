"""A rule set's backtest on the decision log, before it is applied: the logged decisions (the
transaction, the feature vector the model scored, its score and threshold) replayed through a
candidate rule set and through the live one, with the labels THE label policy gives them.

It reports, for the candidate: hits, frauds and precision per rule; the actions; alerts a day
(review and decline) against the review budget; precision and recall of the alerts against the
labels; and what changes from the live set (how many transactions move from which action to
which). ``fraudops rules backtest`` and the API's backtest call :func:`backtest`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from training.core import decision_source, rules, schema

# The rules' transaction fields, from the training layout's columns.
TX_COLUMNS = {
    "customer_id": schema.CUSTOMER_ID,
    "terminal_id": schema.TERMINAL_ID,
    "tx_amount": schema.TX_AMOUNT,
    "tx_channel": schema.TX_CHANNEL,
    "merchant_category": schema.MERCHANT_CATEGORY,
}


@dataclass
class RuleHits:
    name: str
    action: str
    hits: int  # transactions this rule decided (the first to match)
    frauds: int
    precision: float | None  # None: no hit


@dataclass
class Outcome:
    """What one rule set does to the window."""

    version: str
    actions: dict[str, int]
    alerts_per_day: float  # review + decline
    precision: float | None  # of the alerts, against the labels
    recall: float | None  # of the frauds, by the alerts
    rules: list[RuleHits] = field(default_factory=list)


@dataclass
class Backtest:
    since: str
    until: str
    days: int
    transactions: int
    frauds: int
    budget: int  # alerts a day the team reviews
    candidate: Outcome
    live: Outcome
    changes: dict[str, int]  # "review->decline": transactions whose action moves

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def columns_of(window: decision_source.LoggedWindow) -> tuple[dict[str, Any], np.ndarray, Any]:
    """The rules' columns (transaction fields and logged features), the scores and the
    thresholds of the window's answered decisions, aligned on its raw rows."""
    raw = window.raw[window.raw[schema.TRANSACTION_ID].isin(window.answers.index)]
    ids = raw[schema.TRANSACTION_ID].to_numpy()
    answers = window.answers.loc[ids]
    features = window.logged_features.reindex(ids)  # degraded decisions: no features, NaN
    cols: dict[str, Any] = {k: raw[c].to_numpy(dtype=object if k != "tx_amount" else float)
                            for k, c in TX_COLUMNS.items()}  # fmt: skip
    for name in features.columns:
        cols[name] = features[name].to_numpy()
    cols[schema.TX_FRAUD] = raw[schema.TX_FRAUD].to_numpy()
    cols[schema.TX_DATETIME] = raw[schema.TX_DATETIME].to_numpy()
    return cols, answers["probability"].to_numpy(dtype=float), answers["threshold"].to_numpy()


def outcome(
    ruleset: rules.RuleSet,
    cols: Mapping[str, Any],
    score: np.ndarray,
    threshold: Any,
    lists: Mapping[str, frozenset[str]],
    days: int,
) -> tuple[Outcome, np.ndarray]:
    """One rule set over the window: its outcome, and each transaction's action."""
    action, fired = rules.evaluate(ruleset, cols, score, threshold, lists)
    fraud = np.asarray(cols[schema.TX_FRAUD]) == 1
    alert = action != rules.APPROVE
    names = rules.names(ruleset)
    hits = []
    for i, rule in enumerate(ruleset.ordered()):
        hit = fired == i
        n, f = int(hit.sum()), int((hit & fraud).sum())
        hits.append(RuleHits(names[i], rule.action, n, f, f / n if n else None))
    n_alerts = int(alert.sum())
    return (
        Outcome(
            ruleset.version,
            {a: int((action == k).sum()) for k, a in enumerate(rules.ACTIONS)},
            n_alerts / max(days, 1),
            int((alert & fraud).sum()) / n_alerts if n_alerts else None,
            int((alert & fraud).sum()) / int(fraud.sum()) if fraud.any() else None,
            hits,
        ),
        action,
    )


def backtest(
    url: str,
    candidate: rules.RuleSet,
    live: rules.RuleSet,
    since: datetime,
    until: datetime | None = None,
    lists: Mapping[str, frozenset[str]] | None = None,
    label_delay_days: int = 7,
    budget: int = 100,
) -> Backtest:
    """The candidate and the live set over the decisions logged since ``since`` in the store
    at ``url`` (ValueError: none logged; RuleSetError: a rule reads a field the log lacks)."""
    window = decision_source.load_window(url, since, until, label_delay_days)
    cols, score, threshold = columns_of(window)
    known = {k for k in cols if k not in (schema.TX_FRAUD, schema.TX_DATETIME)}
    candidate.check_fields(known)
    times = pd.to_datetime(pd.Series(cols[schema.TX_DATETIME]))
    days = int(times.dt.normalize().nunique())
    lists = lists or {}
    new, new_action = outcome(candidate, cols, score, threshold, lists, days)
    old, old_action = outcome(live, cols, score, threshold, lists, days)
    moved = pd.Series(
        [f"{rules.ACTIONS[a]}->{rules.ACTIONS[b]}"
         for a, b in zip(old_action, new_action, strict=True) if a != b],
        dtype=object,
    ).value_counts()  # fmt: skip
    return Backtest(
        f"{times.min():%Y-%m-%d}",
        f"{times.max():%Y-%m-%d}",
        days,
        len(score),
        int((np.asarray(cols[schema.TX_FRAUD]) == 1).sum()),
        budget,
        new,
        old,
        {str(k): int(v) for k, v in moved.items()},
    )
