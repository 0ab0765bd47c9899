"""The Bento model's folder: the files an imported champion carries, finding one in the store,
and which one the service serves.

Written by :mod:`training.delivery.bento_store` (import), read by the serving package and the bench;
the MLflow run logs the same files under the artifact paths :mod:`training.registry` names.
The served version is pinned in the Bento store's home (``fraud-served.json``): an import of the
champion and every hot swap (roll-outs and roll-backs) set it, and a (re)started service serves
it, not the store's ``:latest``.
"""

from __future__ import annotations

import json
import os
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


def find_challenger(name: str, served_version: str) -> Any:
    """The newest model in the Bento store imported as ``challenger`` that is not the served
    version; LookupError when there is none (import one: ``fraudops import-bento --alias
    challenger``)."""
    import bentoml

    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        models = []
    found = [
        m
        for m in models
        if m.info.labels.get("stage") == "challenger"
        and str(m.info.metadata.get("mlflow_model_version")) != str(served_version)
    ]
    if not found:
        raise LookupError(
            f"no challenger of {name} in the Bento store besides the served version "
            f"{served_version}: import one with `fraudops import-bento --alias challenger`"
        )
    return max(found, key=lambda m: m.info.creation_time)


PIN = "fraud-served.json"


def pin_path() -> Path:
    """The pin file in the Bento store's home (BENTOML_HOME)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / PIN


def pin(name: str, tag: str) -> None:
    """Serve ``tag`` (a Bento model tag) for model ``name`` from the next start on."""
    path = pin_path()
    pins = json.loads(path.read_text()) if path.exists() else {}
    pins[name] = tag
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PIN}.{os.getpid()}")
    tmp.write_text(json.dumps(pins, indent=2) + "\n")
    os.replace(tmp, path)


def served_tag(name: str) -> str:
    """The tag a starting service serves: the pinned one when the store has it, else the
    store's ``:latest`` (a Bento image holds only its own model)."""
    import bentoml

    path = pin_path()
    tag = json.loads(path.read_text()).get(name) if path.exists() else None
    if tag:
        try:
            return str(bentoml.models.get(tag).tag)
        except bentoml.exceptions.NotFound:
            pass
    return f"{name}:latest"
