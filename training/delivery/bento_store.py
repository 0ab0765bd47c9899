"""The Bento store: import an aliased MLflow version as a self-contained Bento model (its files:
:mod:`training.core.bento_model`), build the serving Bento and export it as an archive."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import joblib
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training import registry
from training.core import bento_model, compiled, features, schema
from training.core.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Imported:
    tag: str
    mlflow_version: str
    created: bool


def find_imported(settings: Settings, mlflow_version: str) -> bentoml.Model | None:
    """An already imported Bento model of this registered model version, if any."""
    try:
        return bento_model.find(settings.bento_model, mlflow_version, settings.registered_model)
    except LookupError:
        return None


def import_champion(settings: Settings, alias: str = registry.CHAMPION) -> Imported:
    """Copy the aliased MLflow model (pipeline, model info, warm-up history) into the Bento store.

    Idempotent: a version already imported is not imported twice. Either way the champion
    becomes the version a (re)started service serves (:func:`bento_model.pin`); the
    ``challenger`` is imported beside it, for a live shadow or canary, and not pinned.
    """
    pin = alias != registry.CHALLENGER
    client = registry.configure(settings)
    mv = client.get_model_version_by_alias(settings.registered_model, alias)
    existing = find_imported(settings, str(mv.version))
    if existing is not None:
        if pin:
            bento_model.pin(settings.bento_model, str(existing.tag))
        return Imported(str(existing.tag), str(mv.version), False)
    uri = f"models:/{settings.registered_model}/{mv.version}"
    meta = registry.model_metadata(uri)
    pipeline = mlflow.sklearn.load_model(uri)
    metadata: dict[str, Any] = {
        "mlflow_model_name": settings.registered_model,
        "mlflow_model_version": str(mv.version),
        "mlflow_run_id": mv.run_id,
        "mlflow_alias": alias,
        "threshold": float(meta["threshold"]),
        "feature_set_version": meta.get("feature_set_version"),
        "trained_at": str(mv.creation_timestamp),
        "holdout": {
            k.removeprefix("test_"): round(v, 6)
            for k, v in client.get_run(str(mv.run_id)).data.metrics.items()
            if k in ("test_auc", "test_ap", "test_cp100", "test_precision", "test_recall")
        },
    }
    with bentoml.models.create(
        settings.bento_model, metadata=metadata, labels={"stage": alias}
    ) as model:
        files = bento_model.Layout.of(Path(model.path_of("")))
        joblib.dump(pipeline, files.pipeline)
        files.info.write_text(json.dumps(meta, indent=2))
        warm = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=registry.WARMUP_ARTIFACT
        )
        shutil.copy(warm, files.warmup)
        twin_dir = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=registry.COMPILED_DIR
        )
        shutil.copytree(twin_dir, files.compiled)
        try:
            ref = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=registry.DRIFT_REFERENCE_ARTIFACT
            )
            shutil.copy(ref, files.drift_reference)
        except MlflowException:
            log.warning("version %s has no drift reference: drift metrics off", mv.version)
        verify_twin(pipeline, meta, files)
    if pin:
        bento_model.pin(settings.bento_model, str(model.tag))
    return Imported(str(model.tag), str(mv.version), True)


def verify_twin(pipeline: Any, meta: dict[str, Any], files: bento_model.Layout) -> float:
    """Gate before serving: the compiled twin must match the pipeline on the warm-up history."""
    history = schema.normalize(pd.read_parquet(files.warmup))
    frame = features.offline_features(history)[meta["feature_columns"]]
    twin = compiled.CompiledModel.load(files.compiled)
    return compiled.verify(pipeline, twin, frame.iloc[-10_000:])


def champion_in_store(settings: Settings) -> bool:
    try:
        client: MlflowClient = registry.configure(settings)
        mv = client.get_model_version_by_alias(settings.registered_model, registry.CHAMPION)
    except Exception:
        return False
    return find_imported(settings, str(mv.version)) is not None


def _bentoml(*args: str, timeout: float, cwd: Path | None = None) -> str:
    """Run the ``bentoml`` CLI of this environment; its stdout, or RuntimeError with the output."""
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        raise RuntimeError(f"bentoml {args[0]} failed:\n{run.stdout[-3000:]}\n{run.stderr}")
    return run.stdout


def build_bento(project_dir: Path, base_image: str | None = None) -> str:
    """``bentoml build`` of the project; returns the Bento tag.

    ``base_image`` replaces the Docker base of the Bento's generated Dockerfile (the stack
    without registry access builds on a local Debian image)."""
    if not base_image:
        out = _bentoml("build", "--output", "tag", timeout=600, cwd=project_dir)
    else:
        import tempfile

        import yaml

        spec = yaml.safe_load((project_dir / "bentofile.yaml").read_text())
        spec["docker"] = {"base_image": base_image}
        with tempfile.TemporaryDirectory(prefix="bentofile-") as tmp:
            bentofile = Path(tmp) / "bentofile.yaml"
            bentofile.write_text(yaml.safe_dump(spec, sort_keys=False))
            out = _bentoml(
                "build", "--bentofile", str(bentofile), "--output", "tag",
                timeout=600, cwd=project_dir,
            )  # fmt: skip
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def export_bento(tag: str, out_dir: Path) -> Path:
    """``bentoml export`` of a built Bento into ``out_dir``; returns the archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{tag.replace(':', '-')}.bento"
    _bentoml("export", tag, str(target), timeout=600)
    return target
