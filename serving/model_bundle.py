"""The model bundle: what a Bento model directory holds (the pipeline, its compiled twin, the
drift reference, the warm-up history) and the one way to score with it."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd

from serving.clock import now_ms
from training.core import bento_model, drift, schema
from training.core.compiled import CompiledModel
from training.core.features import FeatureConfig

if TYPE_CHECKING:
    from training.core.explain import ForestExplainer

_EXPLAINER_LOCK = threading.Lock()


@dataclass
class ModelBundle:
    """What the Bento model directory holds. The scikit-learn pipeline is only unpickled when
    asked for (no compiled twin, benchmarks): serving from the twin never imports sklearn."""

    path: Path
    info: dict[str, Any]
    metadata: dict[str, Any]
    warmup_path: Path | None
    compiled: CompiledModel | None = None
    reference: drift.Reference | None = None
    _pipeline: Any = field(default=None, repr=False)
    _explainer: ForestExplainer | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any], threads: int = 1) -> ModelBundle:
        """The bundle in ``path``; the compiled twin runs large batches on ``threads`` threads."""
        files = bento_model.Layout.of(path)
        return cls(
            path=path,
            info=json.loads(files.info.read_text()),
            metadata=dict(metadata),
            warmup_path=files.warmup if files.warmup.exists() else None,
            compiled=(
                CompiledModel.load(files.compiled, threads) if files.compiled.exists() else None
            ),
            reference=(
                drift.Reference.load(files.drift_reference)
                if files.drift_reference.exists()
                else None
            ),
        )

    def history_end_ms(self) -> int:
        """The time of the last transaction in the shipped history (now, without one)."""
        if self.warmup_path is None:
            return now_ms()
        times = pd.read_parquet(self.warmup_path, columns=[schema.TX_DATETIME])[schema.TX_DATETIME]
        if times.empty:
            return now_ms()
        return int(pd.Timestamp(times.max()).value // 1_000_000)

    def explainer(self) -> ForestExplainer:
        """The exact tree-SHAP explainer of this model (built on first use: it unpickles the
        pipeline, ~1 s)."""
        with _EXPLAINER_LOCK:
            if self._explainer is None:
                from training.core.explain import ForestExplainer

                self._explainer = ForestExplainer(self.pipeline, list(self.info["feature_columns"]))
            return self._explainer

    @property
    def version(self) -> str:
        """The MLflow model version this bundle was imported from."""
        return str(self.metadata.get("mlflow_model_version", "unknown"))

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])

    @property
    def columns(self) -> list[str]:
        return list(self.info["feature_columns"])

    def predict_proba(self, cols: Mapping[str, Any]) -> np.ndarray:
        """Fraud probabilities of the feature columns ``cols``: the compiled twin when the
        bundle has one (tested equal to 1e-5), else the scikit-learn pipeline."""
        if self.compiled is not None:
            return np.asarray(self.compiled.predict_proba(cols))
        frame = pd.DataFrame({c: cols[c] for c in self.columns})
        return np.asarray(self.pipeline.predict_proba(frame)[:, 1])

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            pipeline = joblib.load(bento_model.Layout.of(self.path).pipeline)
            model = getattr(pipeline, "named_steps", {}).get("forest")
            # one thread: joblib's pool costs ~20 ms a call at this size (a soft vote's members)
            for part in [model, *getattr(model, "estimators_", [])] if model is not None else []:
                if hasattr(part, "n_jobs"):
                    part.n_jobs = 1
            self._pipeline = pipeline
        return self._pipeline


def feature_config(info: dict[str, Any]) -> FeatureConfig:
    cfg = dict(info.get("feature_config") or {})
    if "windows" in cfg:
        cfg["windows"] = tuple(cfg["windows"])
    return FeatureConfig(**cfg)
