"""The Bento model's folder: the files an imported champion carries, and finding one in the store.

Written by :mod:`training.bento_store` (import), read by the serving package and the bench;
the MLflow run logs the same files under the artifact paths :mod:`training.registry` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIPELINE = "pipeline.joblib"  # the scikit-learn pipeline of record (joblib)
INFO = "model_info.json"  # feature columns, threshold, feature configuration
WARMUP = "warmup.parquet"  # the history that warms the online feature state
COMPILED = "compiled"  # folder: the ONNX Runtime twin (model.onnx + spec.json)
DRIFT_REFERENCE = "reference.json"  # training distribution of every feature (PSI)


@dataclass(frozen=True)
class Layout:
    """Paths of the files inside one Bento model folder."""

    pipeline: Path
    info: Path
    warmup: Path
    compiled: Path
    drift_reference: Path

    @classmethod
    def of(cls, root: Path) -> Layout:
        return cls(*(root / name for name in (PIPELINE, INFO, WARMUP, COMPILED, DRIFT_REFERENCE)))


def find(name: str, mlflow_version: str | None = None, registered_model: str | None = None) -> Any:
    """The Bento store's model ``name`` imported from an MLflow version (default: the latest
    import); raises LookupError when the store does not have it."""
    import bentoml

    if mlflow_version is None:
        try:
            return bentoml.models.get(f"{name}:latest")
        except bentoml.exceptions.NotFound as exc:
            raise LookupError(f"no {name} model in the Bento store") from exc
    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        models = []
    for model in models:
        meta = model.info.metadata
        if str(meta.get("mlflow_model_version")) == str(mlflow_version) and (
            registered_model is None or meta.get("mlflow_model_name") == registered_model
        ):
            return model
    raise LookupError(f"MLflow version {mlflow_version} of {name} is not in the Bento store")
