"""The retraining pipeline's steps: the Airflow DAGs and the ``fraudops`` CLI call these.

Each step is idempotent for a ``run_key`` (the DAG run id): re-running a day finds what it
already did (the appended data day, the registered version, the sent notification) instead of
doing it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from training import data, holdout, registry, sampling
from training.core import compiled, decision_source, features, schema
from training.core.config import Settings
from training.demo import simulate

if TYPE_CHECKING:
    from training.train import TrainingResult

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


class Report:
    """A step's result as strict JSON (what XCom and notifications carry)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(_json_safe(asdict(self)))  # type: ignore[call-overload]


class PipelineError(RuntimeError):
    """A step cannot go on (broken data, failed smoke check); the message says why."""


@dataclass
class DataReport(Report):
    path: str
    days: int
    first_day: str
    last_day: str
    transactions: int
    frauds: int
    appended: list[str] = field(default_factory=list)
    source: str = "files"
    as_of: str | None = None  # db: the label policy's clock, for the steps after
    window: dict[str, str] = field(default_factory=dict)  # db: what the registry records


@dataclass
class TrainedVersion(Report):
    """A trained and registered model version, not yet gated (``reused``: found for the run)."""

    version: str
    run_id: str
    reused: bool
    test_metrics: dict[str, float]


@dataclass
class Deployment(Report):
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    champion: str | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None


@dataclass(frozen=True)
class TrainingData:
    """What a step reads: raw transactions, their offline features and where they came from."""

    raw: pd.DataFrame
    feats: pd.DataFrame
    dataset: str
    tags: dict[str, str] = field(default_factory=dict)  # registered with the model
    window: decision_source.TrainingWindow | None = None  # db: the log's window
    # A weighted sample (FRAUD_SAMPLE_GENUINE < 1): the rows' weights, the full recent history
    # serving warms up from, and the fraction; with a sample or on Spark, the scorer of the
    # full hold-out (training.holdout).
    weights: np.ndarray | None = None
    warmup: pd.DataFrame | None = None
    fraction: float = 1.0
    scorer: holdout.Scorer | None = None


def load_data(
    settings: Settings,
    data_path: Path,
    as_of: datetime | None = None,
    keep_days: int | None = None,
) -> TrainingData:
    """The training data by ``settings.training_source``: the files at ``data_path``, or the
    decision log with the labels (``as_of``: the label policy's clock, default the store's),
    the days before the log from the files. The logged feature vectors are checked against
    the ones recomputed here (:class:`PipelineError` on a training/serving skew).

    Files with ``settings.engine == "spark"``: the feature pass runs on Spark and only the
    last ``keep_days`` days come back (default: the handbook layout's, :func:`data.layout_days`).

    Files with ``settings.sample_genuine`` < 1: the window is the weighted sample of
    :mod:`training.sampling` (every fraud, that share of each day's genuine transactions)."""
    if settings.training_source == "files":
        if settings.engine == "spark":
            return spark_data(settings, data_path, keep_days or data.layout_days())
        raw = data.load_transactions(data_path)
        feats = features.offline_features(raw)
        fraction = settings.sample_genuine
        if fraction >= 1:
            return TrainingData(raw, feats, str(data_path))
        s_raw, s_feats, weights = sampling.sample(raw, feats, fraction)
        return TrainingData(
            s_raw,
            s_feats,
            str(data_path),
            {"data.sample_genuine": f"{fraction:g}"},
            weights=weights,
            warmup=registry.warmup_history(raw),
            fraction=fraction,
            scorer=holdout.LocalScorer(raw, feats),
        )
    import sqlalchemy as sa

    from training.core import decision_store

    url = settings.decision_db_url
    store = sa.make_url(url).render_as_string(hide_password=True)
    try:
        decision_store.upgrade(url)  # an empty store reads as empty, not as a missing table
        files = data.load_transactions(data_path) if data_path.exists() else None
        clock = as_of or decision_source.store_clock(url, wall=settings.clock == "wall")
        window = decision_source.training_window(
            url, files, settings.training_window_days, settings.label_delay_days, clock
        )
    except (data.DataError, ValueError, sa.exc.SQLAlchemyError) as exc:
        raise PipelineError(f"no training window from the decision log at {store}: {exc}") from exc
    feats = features.offline_features(window.raw)
    gaps = decision_source.feature_parity(window.logged, window.raw, feats)
    breaks = decision_source.parity_breaks(gaps)
    if breaks:
        raise PipelineError(
            "the features the service logged differ from those recomputed from the raw columns "
            f"(training/serving skew), largest gap per feature: {breaks}"
        )
    dataset = (
        f"decision log {store} + {data_path}" if window.backfilled else f"decision log {store}"
    )
    return TrainingData(window.raw, feats, dataset, window.tags, window)


def spark_data(settings: Settings, data_path: Path, keep_days: int | None) -> TrainingData:
    """The files' last ``keep_days`` days (every day when None) and their features, computed
    on Spark at ``settings.spark_master`` (a session for this process's life: the window stays
    on the executors to score the hold-out), sampled by ``settings.sample_genuine``."""
    from training.spark.window import process_session, training_window

    fraction = settings.sample_genuine
    window = training_window(
        process_session(settings),
        data_path,
        keep_days,
        fraction=fraction,
        warmup_days=registry.WARMUP_DAYS,
    )
    tags = {"data.engine": "spark", "data.sample_genuine": f"{fraction:g}"}
    return TrainingData(
        window.raw,
        window.feats,
        str(data_path),
        tags,
        weights=window.weights,
        warmup=window.warmup,
        fraction=fraction,
        scorer=window.scorer,
    )


def prepare_data(
    settings: Settings, data_path: Path, run_key: str | None = None, append_days: int = 1
) -> DataReport:
    """The latest training window, validated. From files, a simulated dataset
    (``simulation.json`` beside its ``transactions/``) first grows by ``append_days`` new days,
    once per ``run_key``; from the decision log the window ends at the label horizon and its
    ``as_of`` pins it for the steps after.

    Fails loudly (:class:`PipelineError`) on no data, an unreadable or empty day, a day with
    under a fifth of the median daily volume, or logged features that differ from the
    recomputed ones."""
    appended: list[str] = []
    root = data_path.parent
    db = settings.training_source == "db"
    if (root / simulate.CONFIG_FILE).exists() and append_days > 0 and not db:
        appended = [p.stem for p in simulate.append_days(root, append_days, key=run_key)]
    loaded = None
    try:
        if db:
            loaded = load_data(settings, data_path)
            counts = _day_counts(loaded.raw)
        elif settings.engine == "spark":  # counted on the cluster: no row comes back
            from training.spark.window import day_counts, process_session

            counts = day_counts(process_session(settings), data_path)
        else:
            counts = _day_counts(data.load_transactions(data_path))
    except (data.DataError, ValueError, FileNotFoundError) as exc:
        raise PipelineError(f"data at {data_path} cannot be loaded: {exc}") from exc
    if counts.empty:
        raise PipelineError(f"no transactions in {data_path}")
    per_day = counts["transactions"]
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
        int(per_day.sum()),
        int(counts["frauds"].sum()),
        appended,
        "decision_log" if loaded else "files",
        loaded.tags["data.as_of"] if loaded else None,
        loaded.tags if loaded else {},
    )


def _day_counts(raw: pd.DataFrame) -> pd.DataFrame:
    """Transactions and frauds a day (index: the day at midnight)."""
    day = raw[schema.TX_DATETIME].dt.normalize()
    return pd.DataFrame(
        {
            "transactions": raw.groupby(day).size(),
            "frauds": raw[schema.TX_FRAUD].groupby(day).sum(),
        }
    )


@dataclass
class Purge(Report):
    before: str  # decisions of days before this one were deleted
    decisions: int
    label_events: int


def purge_decisions(settings: Settings, keep_days: int | None = None) -> Purge:
    """Delete the decisions (and their label events) of days older than the retention, by
    the store's clock (the latest logged transaction; now with ``FRAUD_CLOCK=wall``)."""
    from datetime import timedelta

    from training.core import decision_store, partitions

    days = keep_days or settings.decision_retention_days
    decision_store.upgrade(settings.decision_db_url)  # the schema, if nothing made it yet
    try:
        now = decision_source.store_clock(settings.decision_db_url, settings.clock == "wall")
    except ValueError:  # nothing logged: nothing to purge
        return Purge("", 0, 0)
    before = now.date() - timedelta(days=days)
    engine = decision_store.engine_for(settings.decision_db_url)
    try:
        with engine.begin() as conn:
            gone, labels = decision_store.purge(conn, before)
        partitions.ensure_ahead(engine)  # PostgreSQL: the coming days' partitions made ahead
    finally:
        engine.dispose()
    return Purge(before.isoformat(), gone, labels)


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
    loaded: TrainingData | None = None,
    seed: int = 0,
    on_result: Callable[[TrainingResult], None] | None = None,
    as_of: datetime | None = None,
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
    loaded = loaded or load_data(settings, data_path, as_of)
    raw, feats = loaded.raw, loaded.feats
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
        weights=loaded.weights,
    )
    if loaded.scorer is not None:  # the hold-out's metrics on every row, not the sample's
        if progress:
            progress("scoring the whole hold-out with the compiled model")
        full = holdout.exact(
            loaded.scorer,
            raw,
            layout.final,
            [compiled.compile_pipeline(result.pipeline)],
            [result.threshold],
        )[0]
        result.test_metrics, result.test_scores, result.test_labels = (
            full.metrics,
            full.scores,
            full.labels,
        )
    if on_result is not None:
        on_result(result)
    extra = {**loaded.tags, **({RUN_KEY_TAG: run_key} if run_key else {})}
    reg = registry.log_training(
        result,
        raw,
        feats,
        settings,
        loaded.dataset,
        extra_tags=extra,
        warmup=loaded.warmup,
        fraction=loaded.fraction,
    )
    return TrainedVersion(reg.version, reg.run_id, False, dict(result.test_metrics))


def smoke_check(
    settings: Settings,
    version: str,
    data_path: Path,
    rows: int = 200,
    loaded: TrainingData | None = None,
) -> None:
    """The registered model loads and scores a smoke batch of recent data to valid
    probabilities, and its compiled twin agrees (raises :class:`PipelineError`)."""
    from mlflow import sklearn as mlflow_sklearn

    from training.core import compiled

    registry.configure(settings)
    uri = f"models:/{settings.registered_model}/{version}"
    try:
        meta = registry.model_metadata(uri)
        pipe = mlflow_sklearn.load_model(uri)
        feats = (loaded or load_data(settings, data_path)).feats
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
    loaded: TrainingData | None = None,
    as_of: datetime | None = None,
) -> Deployment:
    """The champion gate on the shared hold-out, after the smoke check. A failed smoke check
    leaves the candidate ``challenger`` with the reason."""
    client = registry.configure(settings)
    name = settings.registered_model
    previous = registry.champion_version(client, name)
    loaded = loaded or load_data(settings, data_path, as_of)
    raw, feats = loaded.raw, loaded.feats
    try:
        smoke_check(settings, version, data_path, loaded=loaded)
    except PipelineError as exc:
        client.set_model_version_tag(name, version, "gate_reason", str(exc))
        client.set_registered_model_alias(name, registry.CHALLENGER, version)
        return Deployment(version, False, str(exc), previous, previous, {}, None)
    layout = data.handbook_layout(raw)
    gain = settings.promotion_margin if margin is None else margin
    score = _whole_holdout(loaded.scorer, raw, layout.final) if loaded.scorer else None
    decision = registry.gate(client, name, version, raw, feats, layout.final, gain, score)
    return Deployment(
        version,
        decision.promoted,
        decision.reason,
        decision.previous_champion,
        registry.champion_version(client, name),
        decision.candidate,
        decision.champion,
    )


def _whole_holdout(
    scorer: holdout.Scorer, raw: pd.DataFrame, split: data.Split
) -> Callable[[str], dict[str, float]]:
    """A registered model's metrics on every row of the hold-out, scored where the data lives."""

    def score(uri: str) -> dict[str, float]:
        return holdout.exact(scorer, raw, split, [registry.compiled_files(uri)])[0].metrics

    return score


def already_notified(settings: Settings, version: str, run_key: str) -> bool:
    client = registry.configure(settings)
    mv = client.get_model_version(settings.registered_model, version)
    return (mv.tags or {}).get(NOTIFIED_TAG) == run_key


def mark_notified(settings: Settings, version: str, run_key: str) -> None:
    client = registry.configure(settings)
    client.set_model_version_tag(settings.registered_model, version, NOTIFIED_TAG, run_key)
