"""The retraining pipeline's steps: the Airflow DAGs and the ``fraudops`` CLI call these.

Each step is idempotent for a ``run_key`` (the DAG run id): re-running a day finds what it
already did (the appended data day, the registered version, the sent notification) instead of
doing it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from training import data, features, registry, schema, simulate
from training.config import Settings

if TYPE_CHECKING:
    from training.train import TrainingResult

Frames = tuple[pd.DataFrame, pd.DataFrame]  # raw transactions and their offline features

log = logging.getLogger(__name__)
RUN_KEY_TAG = "pipeline_run"
NOTIFIED_TAG = "pipeline_notified"
MIN_DAY_SHARE = 0.2  # a day with fewer than 20 % of the median daily volume is broken


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (XCom and webhooks carry strict JSON)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class _Report:
    """A step's result as strict JSON (what XCom and notifications carry)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(_json_safe(asdict(self)))  # type: ignore[call-overload]


class PipelineError(RuntimeError):
    """A step cannot go on (broken data, failed smoke check); the message says why."""


@dataclass
class HealthReport(_Report):
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


@dataclass
class DataReport(_Report):
    path: str
    days: int
    first_day: str
    last_day: str
    transactions: int
    frauds: int
    appended: list[str] = field(default_factory=list)


@dataclass
class TrainedVersion(_Report):
    """A trained and registered model version, not yet gated (``reused``: found for the run)."""

    version: str
    run_id: str
    reused: bool
    test_metrics: dict[str, float]


@dataclass
class Deployment(_Report):
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    champion: str | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


def _frames(data_path: Path, frames: Frames | None) -> Frames:
    if frames is not None:
        return frames
    raw = data.load_transactions(data_path)
    return raw, features.offline_features(raw)


def _recent(raw: pd.DataFrame, days: int) -> np.ndarray:
    end = raw[schema.TX_DATETIME].max()
    return (raw[schema.TX_DATETIME] > end - pd.Timedelta(days=days)).to_numpy()


def check_champion(
    settings: Settings,
    data_path: Path,
    days: int = 7,
    drift_threshold: float = 0.25,
    frames: Frames | None = None,
) -> HealthReport:
    """Score the champion on the last ``days`` labelled days; drift against its reference.

    The daily schedule retrains anyway; the report records whether performance or drift
    would have called for it on their own, and why."""
    from mlflow import sklearn as mlflow_sklearn
    from sklearn.metrics import average_precision_score

    from training import metrics

    client = registry.configure(settings)
    name = settings.registered_model
    champion = registry.champion_version(client, name)
    raw, feats = _frames(data_path, frames)
    recent = _recent(raw, days)
    labels = raw[schema.TX_FRAUD].to_numpy()[recent]
    window = (
        f"{raw[schema.TX_DATETIME][recent].min():%Y-%m-%d}.."
        f"{raw[schema.TX_DATETIME][recent].max():%Y-%m-%d}"
    )
    reasons = ["daily schedule"]
    if champion is None:
        return HealthReport(
            None, window, int(recent.sum()), int(labels.sum()), *(float("nan"),) * 4, {},
            True, [*reasons, "no champion yet"],
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
    )


def _holdout_ap(client: Any, name: str, version: str) -> float | None:
    try:
        run_id = client.get_model_version(name, version).run_id
        return float(client.get_run(run_id).data.metrics["test_ap"])
    except (MlflowException, KeyError):
        return None


def prepare_data(data_path: Path, run_key: str | None = None, append_days: int = 1) -> DataReport:
    """The latest training window, validated. A simulated dataset (``simulation.json`` beside
    its ``transactions/``) first grows by ``append_days`` new days, once per ``run_key``.

    Fails loudly (:class:`PipelineError`) on no data, an unreadable or empty day, or a day with
    under a fifth of the median daily volume."""
    appended: list[str] = []
    root = data_path.parent
    if (root / simulate.CONFIG_FILE).exists() and append_days > 0:
        appended = [p.stem for p in simulate.append_days(root, append_days, key=run_key)]
    try:
        raw = data.load_transactions(data_path)
    except (data.DataError, ValueError, FileNotFoundError) as exc:
        raise PipelineError(f"data at {data_path} cannot be loaded: {exc}") from exc
    if raw.empty:
        raise PipelineError(f"no transactions in {data_path}")
    per_day = raw.groupby(raw[schema.TX_DATETIME].dt.normalize()).size()
    expected = pd.date_range(per_day.index.min(), per_day.index.max(), freq="D")
    missing = expected.difference(pd.DatetimeIndex(per_day.index))
    if len(missing):
        raise PipelineError(f"days without any transaction: {[f'{d:%Y-%m-%d}' for d in missing]}")
    floor = MIN_DAY_SHARE * float(per_day.median())
    thin = per_day[per_day < floor]
    if len(thin):
        raise PipelineError(
            f"days with under {MIN_DAY_SHARE:.0%} of the median daily volume "
            f"({per_day.median():.0f}): "
            + ", ".join(f"{d:%Y-%m-%d} ({n})" for d, n in thin.items())
        )
    return DataReport(
        str(data_path),
        len(per_day),
        f"{per_day.index.min():%Y-%m-%d}",
        f"{per_day.index.max():%Y-%m-%d}",
        len(raw),
        int(raw[schema.TX_FRAUD].sum()),
        appended,
    )


def find_run_version(client: Any, name: str, run_key: str) -> Any | None:
    """The registered version a pipeline run already produced, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.{RUN_KEY_TAG} = '{run_key}'")
    return found[0] if found else None


def train_candidate(
    settings: Settings,
    data_path: Path,
    run_key: str | None = None,
    grid: str | dict[str, list[Any]] = "standard",
    progress: Callable[[str], None] | None = None,
    frames: Frames | None = None,
    seed: int = 0,
    on_result: Callable[[TrainingResult], None] | None = None,
) -> TrainedVersion:
    """Train, log to MLflow and register a candidate (not yet gated). Idempotent per run."""
    from training import train as train_mod

    client = registry.configure(settings)
    if run_key is not None:
        existing = find_run_version(client, settings.registered_model, run_key)
        if existing is not None:
            metrics = client.get_run(existing.run_id).data.metrics
            test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
            return TrainedVersion(str(existing.version), str(existing.run_id), True, test)
    raw, feats = _frames(data_path, frames)
    layout = data.handbook_layout(raw)
    result = train_mod.train(
        raw,
        feats,
        layout,
        grid=grid,
        budget=settings.review_budget_per_day,
        seed=seed,
        progress=progress,
        selection=settings.model_selection,
    )
    if on_result is not None:
        on_result(result)
    extra = {RUN_KEY_TAG: run_key} if run_key else {}
    reg = registry.log_training(result, raw, feats, settings, str(data_path), extra_tags=extra)
    return TrainedVersion(reg.version, reg.run_id, False, dict(result.test_metrics))


def smoke_check(
    settings: Settings, version: str, data_path: Path, rows: int = 200, frames: Frames | None = None
) -> None:
    """The registered model loads and scores a smoke batch of recent data to valid
    probabilities, and its compiled twin agrees (raises :class:`PipelineError`)."""
    from mlflow import sklearn as mlflow_sklearn

    from training import compiled

    registry.configure(settings)
    uri = f"models:/{settings.registered_model}/{version}"
    try:
        meta = registry.model_metadata(uri)
        pipe = mlflow_sklearn.load_model(uri)
        _, feats = _frames(data_path, frames)
        frame = feats.iloc[-rows:][meta["feature_columns"]]
        proba = pipe.predict_proba(frame)[:, 1]
        run_id = registry.mlflow.models.get_model_info(uri).run_id
        compiled.verify(pipe, registry.load_compiled(str(run_id)), frame)
    except (MlflowException, OSError, KeyError, ValueError, compiled.CompiledModelError) as exc:
        raise PipelineError(f"smoke check of version {version} failed: {exc}") from exc
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise PipelineError(f"smoke check of version {version}: probabilities out of [0, 1]")


def deploy_candidate(
    settings: Settings,
    version: str,
    data_path: Path,
    margin: float | None = None,
    frames: Frames | None = None,
) -> Deployment:
    """The champion gate on the shared hold-out, after the smoke check. A failed smoke check
    leaves the candidate ``challenger`` with the reason."""
    client = registry.configure(settings)
    name = settings.registered_model
    previous = registry.champion_version(client, name)
    raw, feats = _frames(data_path, frames)
    try:
        smoke_check(settings, version, data_path, frames=(raw, feats))
    except PipelineError as exc:
        client.set_model_version_tag(name, version, "gate_reason", str(exc))
        client.set_registered_model_alias(name, registry.CHALLENGER, version)
        return Deployment(version, False, str(exc), previous, previous, {}, None)
    layout = data.handbook_layout(raw)
    gain = settings.promotion_margin if margin is None else margin
    decision = registry.gate(client, name, version, raw, feats, layout.final, gain)
    return Deployment(
        version,
        decision.promoted,
        decision.reason,
        decision.previous_champion,
        registry.champion_version(client, name),
        decision.candidate,
        decision.champion,
    )


def already_notified(settings: Settings, version: str, run_key: str) -> bool:
    client = registry.configure(settings)
    mv = client.get_model_version(settings.registered_model, version)
    return (mv.tags or {}).get(NOTIFIED_TAG) == run_key


def mark_notified(settings: Settings, version: str, run_key: str) -> None:
    client = registry.configure(settings)
    client.set_model_version_tag(settings.registered_model, version, NOTIFIED_TAG, run_key)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


STAGES = ("performance_check", "data_prep", "training", "deployment")


def summary(report: dict[str, dict[str, Any] | None], run_id: str) -> tuple[str, str]:
    """Subject and text of the run's notification: metrics, decision, versions, reason."""
    failed = [s for s in STAGES if report.get(s) is None]
    health = report.get("performance_check") or {}
    prepared = report.get("data_prep") or {}
    cand = report.get("training") or {}
    dep = report.get("deployment") or {}
    lines = [f"Run {run_id}"]
    if health:
        lines.append(
            f"Champion v{health.get('champion_version')} on {health.get('window')}: "
            f"precision {_num(health.get('precision'))}, recall {_num(health.get('recall'))}, "
            f"AP {_num(health.get('ap'))}, max PSI {_num(health.get('max_psi'))}. "
            f"Retrain because: {'; '.join(health.get('reasons', []))}."
        )
    if prepared:
        lines.append(
            f"Data: {prepared.get('transactions', 0):,} transactions over {prepared.get('days')} "
            f"days ({prepared.get('first_day')}..{prepared.get('last_day')})"
            + (f", new days {', '.join(prepared['appended'])}" if prepared.get("appended") else "")
        )
    if cand:
        m = cand.get("test_metrics", {})
        lines.append(
            f"Candidate v{cand.get('version')}: hold-out AUC {_num(m.get('auc'))}, "
            f"AP {_num(m.get('ap'))}, CP@100 {_num(m.get('cp100'))}"
        )
    if dep:
        verdict = "promoted to champion" if dep.get("promoted") else "kept as challenger"
        lines.append(
            f"Decision: v{dep.get('version')} {verdict} (previous champion "
            f"v{dep.get('previous_champion')}). Reason: {dep.get('reason')}"
        )
    if failed:
        lines.append(f"FAILED: no result from {', '.join(failed)} (see the Airflow task logs)")
        subject = f"[fraud-mlops] retraining FAILED at {failed[0]}"
    elif dep.get("promoted"):
        subject = f"[fraud-mlops] v{dep.get('version')} promoted to champion"
    else:
        subject = f"[fraud-mlops] v{dep.get('version')} not promoted"
    return subject, "\n".join(lines)
