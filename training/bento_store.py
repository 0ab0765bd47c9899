"""Bento store: import the MLflow champion as a self-contained Bento model; build Bentos."""

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

from training import compiled, drift, features, registry, schema, serving
from training.config import Settings

PIPELINE_FILE = "pipeline.joblib"
INFO_FILE = "model_info.json"
WARMUP_FILE = "warmup.parquet"
log = logging.getLogger(__name__)


@dataclass
class Imported:
    tag: str
    mlflow_version: str
    created: bool


def find_imported(settings: Settings, mlflow_version: str) -> bentoml.Model | None:
    """An already imported Bento model of this registered model version, if any."""
    try:
        return serving.find_bento_model(
            settings.bento_model, mlflow_version, settings.registered_model
        )
    except LookupError:
        return None


def import_champion(settings: Settings, alias: str = registry.CHAMPION) -> Imported:
    """Copy the aliased MLflow model (pipeline, model info, warm-up history) into the Bento store.

    Idempotent: a version already imported is not imported twice.
    """
    client = registry.configure(settings)
    mv = client.get_model_version_by_alias(settings.registered_model, alias)
    existing = find_imported(settings, str(mv.version))
    if existing is not None:
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
        joblib.dump(pipeline, model.path_of(PIPELINE_FILE))
        Path(model.path_of(INFO_FILE)).write_text(json.dumps(meta, indent=2))
        warm = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=registry.WARMUP_ARTIFACT
        )
        shutil.copy(warm, model.path_of(WARMUP_FILE))
        twin_dir = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=registry.COMPILED_DIR
        )
        shutil.copytree(twin_dir, model.path_of(registry.COMPILED_DIR))
        try:
            ref = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=drift.REFERENCE_ARTIFACT
            )
            shutil.copy(ref, model.path_of(drift.REFERENCE_FILE))
        except MlflowException:
            log.warning("version %s has no drift reference: drift metrics off", mv.version)
        verify_twin(pipeline, meta, Path(model.path_of("")))
    return Imported(str(model.tag), str(mv.version), True)


def verify_twin(pipeline: Any, meta: dict[str, Any], folder: Path) -> float:
    """Gate before serving: the compiled twin must match the pipeline on the warm-up history."""
    history = schema.normalize(pd.read_parquet(folder / WARMUP_FILE))
    frame = features.offline_features(history)[meta["feature_columns"]]
    twin = compiled.CompiledModel.load(folder / registry.COMPILED_DIR)
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


class RolloutError(RuntimeError):
    """The running service did not take the new model (or failed its smoke check)."""


def export_bento(tag: str, out_dir: Path) -> Path:
    """``bentoml export`` of a built Bento into ``out_dir``; returns the archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{tag.replace(':', '-')}.bento"
    _bentoml("export", tag, str(target), timeout=600)
    return target


def docker_reachable() -> bool:
    """A Docker engine answers on DOCKER_HOST (or the default socket)."""
    try:
        import docker

        return bool(docker.from_env(timeout=10).ping())
    except Exception:
        return False


def image_is_current(settings: Settings, version: str) -> bool:
    """``<api_image>:v<version>`` exists and serves the model imported for that version (a
    ``v1`` left by an earlier stack holds another model)."""
    from training import rollout

    model = find_imported(settings, version)
    label = rollout.image_label(rollout.image_for(settings, version))
    return model is not None and label == str(model.tag)


def containerize(settings: Settings, bento_tag: str, version: str) -> str:
    """The Bento as image ``<api_image>:v<version>`` (kept when it is current)."""
    from training import rollout

    image = rollout.image_for(settings, version)
    if not image_is_current(settings, version):
        model = find_imported(settings, version)
        labels = {
            rollout.MODEL_LABEL: str(model.tag) if model else "",
            "org.fraud-mlops.version": version,
        }
        rollout.build_image(bento_tag, image, labels=labels, log=log.info)
    return image.ref


def _admin_headers(settings: Settings) -> dict[str, str]:
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def reload_service(settings: Settings, version: str) -> dict[str, Any] | None:
    """Ask the running service to hot-swap to ``version`` (already in its Bento store).

    Returns the service's answer, or None when no service listens at ``settings.api_url``."""
    import httpx

    try:
        resp = httpx.post(
            f"{settings.api_url}/admin/reload",
            json={"version": version},
            headers=_admin_headers(settings),
            timeout=120,
        )
    except httpx.ConnectError:
        return None
    if resp.status_code != 200:
        raise RolloutError(f"reload to version {version} refused: {resp.status_code} {resp.text}")
    answer: dict[str, Any] = resp.json()
    return answer


def smoke_prediction(settings: Settings, version: str) -> dict[str, Any]:
    """The service scores its built-in sample with ``version`` (``/test`` records nothing)."""
    import httpx

    resp = httpx.get(f"{settings.api_url}/test", timeout=30)
    body: dict[str, Any] = resp.json() if resp.status_code == 200 else {}
    if body.get("status") != "ok" or str(body.get("model_version")) != str(version):
        raise RolloutError(
            f"smoke prediction failed: HTTP {resp.status_code}, status {body.get('status')}, "
            f"model_version {body.get('model_version')} (expected {version})"
        )
    return body


def served_version(settings: Settings) -> str | None:
    """The model version the running service answers with (None when nothing answers)."""
    import httpx

    try:
        resp = httpx.get(f"{settings.api_url}/health", timeout=30)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return str(resp.json().get("model", {}).get("version"))


def roll_out(settings: Settings, version: str) -> dict[str, Any] | None:
    """Make the service answer with ``version``: a hot swap of the running service, or (target
    ``compose``) its image as ``champion`` and a recreated fraud-api container.

    Returns what happened, with ``previous_version`` for a roll-back; None when no service
    runs (local target only)."""
    if settings.deploy_target == "compose":
        from training import rollout

        previous = served_version(settings)
        done = rollout.roll_out(settings, version)
        return {"model_version": version, "previous_version": previous, **done}
    return reload_service(settings, version)


def rollback(settings: Settings, previous: str) -> dict[str, Any] | None:
    """Give ``champion`` back to ``previous`` and switch the service back to it."""
    client = registry.configure(settings)
    client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, previous)
    return roll_out(settings, previous)
