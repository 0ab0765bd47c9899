"""The retraining DAG's performance check (``fraudops check``): the champion on the latest
labelled days (precision, recall, AP, drift) and, from the decision log, what the service answered
live, every model and each challenger against the champion; the reasons to retrain."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from training import registry
from training.core import schema
from training.core.config import Settings
from training.pipeline import Report, TrainingData, load_data

log = logging.getLogger(__name__)


@dataclass
class HealthReport(Report):
    """The champion on the most recent labelled days: performance and drift."""

    champion_version: str | None
    window: str
    n_transactions: int
    n_frauds: int
    precision: float
    recall: float
    ap: float
    max_psi: float
    drifted: dict[str, float]
    retrain: bool  # performance or drift alone call for retraining (the schedule retrains anyway)
    reasons: list[str]
    source: str = "files"
    live: dict[str, Any] = field(default_factory=dict)  # db: what the service answered


def _recent(raw: pd.DataFrame, days: int) -> np.ndarray:
    end = raw[schema.TX_DATETIME].max()
    return (raw[schema.TX_DATETIME] > end - pd.Timedelta(days=days)).to_numpy()


def check_champion(
    settings: Settings,
    data_path: Path,
    days: int = 7,
    drift_threshold: float = 0.25,
    loaded: TrainingData | None = None,
) -> HealthReport:
    """Score the champion on the last ``days`` labelled days; drift against its reference.
    From the decision log (``training_source=db``) the days are the latest whose labels are
    in by the policy, and ``live`` adds what the service itself answered on them.

    The daily schedule retrains anyway; the report records whether performance or drift
    would have called for it on their own, and why."""
    from mlflow import sklearn as mlflow_sklearn
    from sklearn.metrics import average_precision_score

    from training import metrics

    client = registry.configure(settings)
    name = settings.registered_model
    champion = registry.champion_version(client, name)
    # every row of the checked days (a training sample would bias precision), and on Spark only
    # the days it checks (its windows' history is read on the cluster)
    loaded = loaded or load_data(
        settings.model_copy(update={"sample_genuine": 1.0}), data_path, keep_days=days
    )
    raw, feats = loaded.raw, loaded.feats
    recent = _recent(raw, days)
    live = _live(loaded, raw[schema.TRANSACTION_ID][recent], champion, settings)
    source = "files" if loaded.window is None else "decision_log"
    labels = raw[schema.TX_FRAUD].to_numpy()[recent]
    window = (
        f"{raw[schema.TX_DATETIME][recent].min():%Y-%m-%d}.."
        f"{raw[schema.TX_DATETIME][recent].max():%Y-%m-%d}"
    )
    reasons = ["daily schedule"]
    if champion is None:
        return HealthReport(
            None, window, int(recent.sum()), int(labels.sum()), *(float("nan"),) * 4, {},
            True, [*reasons, "no champion yet"], source, live,
        )  # fmt: skip
    uri = f"models:/{name}/{champion}"
    meta = registry.model_metadata(uri)
    frame = feats.loc[recent, meta["feature_columns"]]
    scores = mlflow_sklearn.load_model(uri).predict_proba(frame)[:, 1]
    thr = metrics.threshold_metrics(labels, scores, float(meta["threshold"]))
    single = len(np.unique(labels)) < 2
    ap = float("nan") if single else float(average_precision_score(labels, scores))
    try:
        _, reference = registry.load_reference(client, name, registry.CHAMPION)
        psi = reference.psi(feats.loc[recent])
    except (MlflowException, OSError):
        psi = {}
    drifted = {k: round(v, 4) for k, v in psi.items() if v > drift_threshold}
    holdout_ap = _holdout_ap(client, name, champion)
    if drifted:
        reasons.append(f"drift above {drift_threshold} on {', '.join(sorted(drifted))}")
    if holdout_ap is not None and not single and ap < holdout_ap - 0.1:
        reasons.append(f"live AP {ap:.3f} is more than 0.1 below hold-out AP {holdout_ap:.3f}")
    for version, duel in (live.get("challengers") or {}).items():
        if duel["promote"]:  # a proposal: `fraudops promote VERSION` acts on it
            reasons.append(
                f"challenger v{version} beats the champion on live labels ({duel['reason']}): "
                f"promote it with `fraudops promote {version}`"
            )
    return HealthReport(
        champion,
        window,
        int(recent.sum()),
        int(labels.sum()),
        thr["precision"],
        thr["recall"],
        ap,
        max(psi.values(), default=0.0),
        drifted,
        len(reasons) > 1,
        reasons,
        source,
        live,
    )


def _live(
    loaded: TrainingData, ids: pd.Series, champion: str | None, settings: Settings
) -> dict[str, Any]:
    """Precision, recall and AP of the answers the service logged for ``ids`` against their
    labels (by the policy): all of them, and the champion's own when it answered any; and
    every live challenger against the champion on the transactions both scored
    (:func:`_duels`)."""
    from training import metrics

    if loaded.window is None:
        return {}
    answers = loaded.window.logged.answers
    answers = answers[answers.index.isin(ids.to_numpy()) & ~answers["degraded"].astype(bool)]
    label = loaded.raw.set_index(schema.TRANSACTION_ID)[schema.TX_FRAUD]
    counts = answers["model_version"].value_counts()
    out: dict[str, Any] = {"versions": {str(k): int(v) for k, v in counts.items()}}
    for key, part in (
        ("all", answers),
        ("champion", answers[answers["model_version"] == champion]),
    ):
        if not len(part):
            continue
        y = label.loc[part.index].to_numpy()
        m = metrics.decision_metrics(y, part["probability"].to_numpy(), part["is_fraud"].to_numpy())
        out[key] = {"n": len(part), "frauds": int(y.sum()), **m}
    if champion is not None:
        duels = _duels(loaded.raw.set_index(schema.TRANSACTION_ID), answers, champion, settings)
        if duels:
            out["challengers"] = duels
    return out


def _duels(
    raw: pd.DataFrame, answers: pd.DataFrame, champion: str, settings: Settings
) -> dict[str, dict[str, Any]]:
    """Each live challenger (a shadow, or a canary) against the champion on the labelled
    transactions both scored: precision and recall of each one's decisions, AUC, AP and
    CP@100 of its scores, and the promotion gate's verdict on them (the same rule as on the
    hold-out: ``registry.decide``)."""
    from training import metrics

    pairs = answers[answers["shadow_version"].notna()]
    out: dict[str, dict[str, Any]] = {}
    for version in sorted({*pairs["model_version"], *pairs["shadow_version"]} - {champion}):
        mine = pairs[(pairs["model_version"] == version) & (pairs["shadow_version"] == champion)]
        theirs = pairs[(pairs["shadow_version"] == version) & (pairs["model_version"] == champion)]
        champ_p = np.concatenate([mine["shadow_probability"], theirs["probability"]])
        champ_f = np.concatenate([mine["shadow_is_fraud"], theirs["is_fraud"]])
        chall_p = np.concatenate([mine["probability"], theirs["shadow_probability"]])
        chall_f = np.concatenate([mine["is_fraud"], theirs["shadow_is_fraud"]])
        ids = np.concatenate([mine.index, theirs.index])
        if not len(ids):
            continue
        y = raw.loc[ids, schema.TX_FRAUD].to_numpy().astype(int)
        days = raw.loc[ids, schema.TX_DATETIME].dt.normalize().to_numpy()
        customers = raw.loc[ids, schema.CUSTOMER_ID].to_numpy()
        scored = {}
        for role, p, f in (("champion", champ_p, champ_f), ("challenger", chall_p, chall_f)):
            p, f = p.astype(float), f.astype(bool)
            scored[role] = {
                **metrics.decision_metrics(y, p, f),
                **metrics.ranking_metrics(y, p, days, customers),
            }
        promote, reason = (
            registry.decide(scored["challenger"], scored["champion"], settings.promotion_margin)
            if len(np.unique(y)) == 2
            else (False, "one class only among the labelled transactions")
        )
        out[version] = {
            "n": len(ids),
            "frauds": int(y.sum()),
            "canary": len(mine),
            "shadow": len(theirs),
            **scored,
            "promote": promote,
            "reason": reason,
        }
    return out


def _holdout_ap(client: Any, name: str, version: str) -> float | None:
    try:
        run_id = client.get_model_version(name, version).run_id
        return float(client.get_run(run_id).data.metrics["test_ap"])
    except (MlflowException, KeyError):
        return None
