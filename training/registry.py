"""MLflow: log a training run, register the model, move ``champion`` only when it is better."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from training import data, metrics, reports, sampling
from training.core import bento_model, compiled, drift, explain, features, schema
from training.core.config import Settings
from training.train import TrainingResult

CHAMPION = "champion"
CHALLENGER = "challenger"
# Artifact paths in a training run: the Bento model's files (training.core.bento_model).
WARMUP_ARTIFACT = f"feature_state/{bento_model.WARMUP}"
COMPILED_DIR = bento_model.COMPILED
DRIFT_REFERENCE_ARTIFACT = f"drift/{bento_model.DRIFT_REFERENCE}"
WARMUP_DAYS = 37  # longest window (30) + label delay (7)
PIP_REQUIREMENTS = [
    f"scikit-learn=={__import__('sklearn').__version__}",
    f"imbalanced-learn=={__import__('imblearn').__version__}",
    f"pandas=={pd.__version__}",
    f"numpy=={np.__version__}",
    "cloudpickle",
]


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store; a local SQLite store keeps artefacts beside it."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    if client.get_experiment_by_name(settings.experiment_name) is None:
        location = None
        if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
            root = settings.mlflow_artifact_root.resolve()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        client.create_experiment(settings.experiment_name, artifact_location=location)
    mlflow.set_experiment(settings.experiment_name)
    return client


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def warmup_history(raw: pd.DataFrame, days: int = WARMUP_DAYS) -> pd.DataFrame:
    """The most recent ``days`` of raw history: what serving materialises its state from."""
    end = raw[schema.TX_DATETIME].max()
    return raw[raw[schema.TX_DATETIME] > end - pd.Timedelta(days=days)].reset_index(drop=True)


@dataclass
class Registration:
    run_id: str
    version: str
    model_uri: str


def log_training(
    result: TrainingResult,
    raw: pd.DataFrame,
    feats: pd.DataFrame,
    settings: Settings,
    dataset: str,
    extra_tags: dict[str, str] | None = None,
    warmup: pd.DataFrame | None = None,
    fraction: float = 1.0,
) -> Registration:
    """One MLflow run: params, metrics, every candidate (nested runs), artefacts, the model.
    A weighted sample (``fraction`` of the genuine rows) brings the full recent history
    serving warms up from (``warmup``)."""
    info = result.model_info()
    commit = git_commit()
    tags = {
        "dataset": dataset,
        "feature_set_version": features.FEATURE_SET_VERSION,
        "git_commit": commit,
        **{f"data.{k}": v for k, v in result.data_window.items()},
        **(extra_tags or {}),
    }
    with mlflow.start_run(run_name=f"train-{result.candidate.name}", tags=tags) as run:
        mlflow.log_params({f"model.{k}": v for k, v in asdict(result.candidate).items()})
        mlflow.log_params(
            {
                "threshold": round(result.threshold, 6),
                "review_budget_per_day": settings.review_budget_per_day,
                "categorical_fields": result.categorical,
                "n_candidates": len(result.search),
                "n_transactions": len(raw),
                "model_selection": result.selection.get("rule"),
                "best_ap_candidate": result.selection.get("best_ap_candidate"),
            }
        )
        mlflow.log_metrics({f"test_{k}": v for k, v in result.test_metrics.items()})
        mlflow.log_metrics(result.timings)
        if "ap_floor" in result.selection:  # the one-standard-error rule's AP floor
            mlflow.log_metric("selection_ap_floor", result.selection["ap_floor"])
        rows = []
        for cr in result.search:
            summary = cr.summary()
            rows.append({"candidate": cr.candidate.name, **asdict(cr.candidate), **summary})
            with mlflow.start_run(run_name=cr.candidate.name, nested=True):
                mlflow.log_params(asdict(cr.candidate))
                mlflow.log_metrics({f"val_{k}": v for k, v in summary.items()})
                for j, fold in enumerate(cr.folds):
                    mlflow.log_metrics({f"fold_{k}": v for k, v in fold.metrics.items()}, step=j)
        best = next(r for r in rows if r["candidate"] == result.candidate.name)
        mlflow.log_metrics(
            {f"val_{k}": v for k, v in best.items() if k.endswith(("_mean", "_std"))}
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            reports.write_curves(result.test_labels, result.test_scores, out / "plots")
            reports.write_confusion(
                result.test_labels, result.test_scores, result.threshold, out / "plots"
            )
            reports.write_importances(result.pipeline, out / "plots")
            held_out = shap_sample(raw, feats[result.feature_columns], result.data_window)
            try:
                explainer = explain.ForestExplainer(result.pipeline, result.feature_columns)
                explained = explainer.explain(held_out)
                reports.write_shap_summary(explained, held_out, out / "plots")
                mlflow.log_metric("shap_sample_rows", len(held_out))
            except explain.UnsupportedModel as exc:  # a soft vote: no exact reason codes
                mlflow.set_tag("shap", str(exc))
            pd.DataFrame(rows).to_csv(out / "candidates.csv", index=False)
            (out / "evaluation.json").write_text(
                json.dumps(
                    {
                        "test": result.test_metrics,
                        "validation": best,
                        "data_window": result.data_window,
                    },
                    indent=2,
                    default=str,
                )
            )
            (out / bento_model.INFO).write_text(json.dumps(info, indent=2, default=str))
            reference = training_reference(raw, feats, result, fraction)
            ref_path = out / DRIFT_REFERENCE_ARTIFACT
            ref_path.parent.mkdir()
            ref_path.write_text(reference.to_json())
            diff = compile_and_verify(result.pipeline, feats[result.feature_columns], out)
            mlflow.log_metric("compiled_max_abs_diff", diff)
            mlflow.log_artifacts(str(out))
            warm = out / bento_model.WARMUP
            (warmup if warmup is not None else warmup_history(raw)).to_parquet(warm, index=False)
            mlflow.log_artifact(str(warm), artifact_path=str(Path(WARMUP_ARTIFACT).parent))
        X = feats[result.feature_columns]
        example = X.head(5)
        signature = infer_signature(example, result.pipeline.predict_proba(example)[:, 1])
        logged = mlflow.sklearn.log_model(
            result.pipeline,
            name="model",
            serialization_format="cloudpickle",
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            metadata=json.loads(json.dumps(info, default=str)),
            registered_model_name=settings.registered_model,
        )
        version = str(logged.registered_model_version)
    client = MlflowClient()
    for key, value in {
        **tags,
        "threshold": f"{result.threshold:.6f}",
        "run_id": run.info.run_id,
    }.items():
        client.set_model_version_tag(settings.registered_model, version, key, str(value))
    return Registration(run.info.run_id, version, f"models:/{settings.registered_model}/{version}")


SHAP_ROWS = 2_000  # held-out transactions the training run's global SHAP picture explains


def shap_sample(
    raw: pd.DataFrame, feats: pd.DataFrame, window: dict[str, str], rows: int = SHAP_ROWS
) -> pd.DataFrame:
    """Up to ``rows`` transactions of the hold-out week (its frauds, up to half of them, then
    genuine ones at random): the rows the global SHAP picture explains."""
    day = raw[schema.TX_DATETIME].dt.normalize()
    test = (day >= pd.Timestamp(window["test_start"])) & (day <= pd.Timestamp(window["test_end"]))
    fraud = raw[schema.TX_FRAUD].to_numpy().astype(bool)
    pick = np.flatnonzero(test.to_numpy() & fraud)[: rows // 2]
    genuine = np.flatnonzero(test.to_numpy() & ~fraud)
    rng = np.random.default_rng(0)
    more = rng.choice(genuine, size=min(len(genuine), rows - len(pick)), replace=False)
    return feats.iloc[np.sort(np.concatenate([pick, more]))]


def training_reference(
    raw: pd.DataFrame, feats: pd.DataFrame, result: TrainingResult, fraction: float = 1.0
) -> drift.Reference:
    """Drift reference: the feature distribution of the final training window. From a
    sample with every fraud and ``fraction`` of the genuine, the frauds are drawn at that
    fraction too, so the reference is a uniform sample of the traffic."""
    window = result.data_window
    times = raw[schema.TX_DATETIME]
    start = pd.Timestamp(window["train_start"])
    end = pd.Timestamp(window["train_end"]) + pd.Timedelta(days=1)
    mask = ((times >= start) & (times < end)).to_numpy()
    if fraction < 1:
        fraud = raw[schema.TX_FRAUD].to_numpy() == 1
        drawn = sampling.uniform(raw[schema.TRANSACTION_ID].to_numpy(), seed=1) < fraction
        mask = mask & (~fraud | drawn)
    rows = feats.loc[mask] if mask.any() else feats
    return drift.build_reference(rows, result.feature_columns)


def load_reference(client: MlflowClient, name: str, alias: str) -> tuple[str, drift.Reference]:
    """The drift reference logged with the aliased version: (version, reference)."""
    mv = client.get_model_version_by_alias(name, alias)
    path = mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path=DRIFT_REFERENCE_ARTIFACT
    )
    return str(mv.version), drift.Reference.load(Path(path))


def compile_and_verify(pipeline: Any, frame: pd.DataFrame, out: Path) -> float:
    """Compile the forest, check it against the pipeline on the last 10,000 rows, save it
    under ``out/compiled``; returns the max abs probability difference."""
    onnx_bytes, spec = compiled.compile_pipeline(pipeline)
    diff = compiled.verify(pipeline, compiled.CompiledModel(onnx_bytes, spec), frame.iloc[-10_000:])
    compiled.save(onnx_bytes, spec, out / COMPILED_DIR)
    return diff


def load_compiled(run_id: str) -> compiled.CompiledModel:
    """The compiled twin logged with a training run."""
    folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=COMPILED_DIR)
    return compiled.CompiledModel.load(Path(folder))


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def model_metadata(uri: str) -> dict[str, Any]:
    return dict(mlflow.models.get_model_info(uri).metadata or {})


def holdout_metrics(
    uri: str,
    raw: pd.DataFrame,
    feats: pd.DataFrame,
    split: data.Split,
    check_compiled: bool = False,
) -> dict[str, float]:
    """Score a registered model on a hold-out with its own feature columns; optionally check
    that its compiled twin gives the same probabilities (raises CompiledModelError)."""
    meta = model_metadata(uri)
    pipe = mlflow.sklearn.load_model(uri)
    cols = meta["feature_columns"]
    missing = [c for c in cols if c not in feats.columns]
    if missing:
        raise ValueError(f"model {uri} needs features {missing} that this data cannot provide")
    frame = feats.iloc[split.test][cols]
    scores = pipe.predict_proba(frame)[:, 1]
    if check_compiled:
        verify_compiled(uri, frame, pipe)
    labels = raw[schema.TX_FRAUD].to_numpy()[split.test]
    days = data.day_index(raw)[split.test]
    return metrics.ranking_metrics(
        labels, scores, days, raw[schema.CUSTOMER_ID].to_numpy()[split.test]
    )


def verify_compiled(uri: str, frame: pd.DataFrame, pipe: Any = None) -> float:
    """The registered model's compiled twin gives its pipeline's probabilities on ``frame``'s
    rows (raises CompiledModelError)."""
    pipe = pipe if pipe is not None else mlflow.sklearn.load_model(uri)
    cols = model_metadata(uri)["feature_columns"]
    run_id = mlflow.models.get_model_info(uri).run_id
    return compiled.verify(pipe, load_compiled(str(run_id)), frame[cols])


def compiled_files(uri: str) -> tuple[bytes, compiled.InputSpec]:
    """A registered model's compiled twin as bytes and input spec (to ship to executors)."""
    run_id = mlflow.models.get_model_info(uri).run_id
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=COMPILED_DIR))
    spec = compiled.InputSpec(**json.loads((folder / compiled.SPEC_FILE).read_text()))
    return (folder / compiled.MODEL_FILE).read_bytes(), spec


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None
    previous_champion: str | None


def decide(cand: dict[str, float], champ: dict[str, float], margin: float) -> tuple[bool, str]:
    """AP first: promote when AP gains more than ``margin``; within the margin (a tie) a better
    CP@100 wins, provided AP did not drop. Never promote a lower-AP model."""
    d_ap = cand["ap"] - champ["ap"]
    d_cp = cand["cp100"] - champ["cp100"]
    if d_ap > margin:
        return (
            True,
            f"AP {cand['ap']:.4f} beats champion {champ['ap']:.4f} by {d_ap:+.4f} > {margin}",
        )
    if 0 <= d_ap <= margin and d_cp > 0:
        return True, f"AP tie within {margin} ({d_ap:+.4f}); CP@100 better by {d_cp:+.4f}"
    return False, (
        f"AP {cand['ap']:.4f} vs champion {champ['ap']:.4f} ({d_ap:+.4f}, margin {margin}); "
        f"CP@100 {cand['cp100']:.4f} vs {champ['cp100']:.4f}"
    )


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    raw: pd.DataFrame,
    feats: pd.DataFrame,
    split: data.Split,
    margin: float,
    score: Callable[[str], dict[str, float]] | None = None,
) -> GateDecision:
    """Compare candidate and champion on the same hold-out; move aliases accordingly.
    ``score``: a model's hold-out metrics where the data lives (a sample's full hold-out,
    :mod:`training.holdout`); by default the pipelines score ``split`` here."""
    cand_uri = f"models:/{name}/{version}"
    current = champion_version(client, name)
    try:
        if score is None:
            cand = holdout_metrics(cand_uri, raw, feats, split, check_compiled=True)
        else:
            verify_compiled(cand_uri, feats.iloc[split.test])
            cand = score(cand_uri)
    except (compiled.CompiledModelError, OSError, MlflowException) as exc:
        reason = f"compiled model check failed: {exc}"
        client.set_model_version_tag(name, version, "gate_reason", reason)
        client.set_registered_model_alias(name, CHALLENGER, version)
        return GateDecision(False, reason, {}, None, current)
    if current is None:
        promoted, reason, champ = True, "first model: no champion yet", None
    elif current == version:
        promoted, reason, champ = True, "already champion", cand
    else:
        champ_uri = f"models:/{name}/{current}"
        champ = score(champ_uri) if score else holdout_metrics(champ_uri, raw, feats, split)
        promoted, reason = decide(cand, champ, margin)
    client.set_model_version_tag(name, version, "gate_reason", reason)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        try:
            if str(client.get_model_version_by_alias(name, CHALLENGER).version) == version:
                client.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException:
            pass
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    return GateDecision(promoted, reason, cand, champ, current)
