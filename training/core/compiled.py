"""Compiled inference: the fitted forest in ONNX Runtime, the preprocessing in plain numpy.

The scikit-learn pipeline stays the model of record; this is its fast twin for serving. Only
the forest is compiled (float32 input, probabilities out). The pipeline's one-hot encoding is
replayed by index lookups, so a batch goes from feature columns to probabilities with no
pandas. :func:`max_abs_difference` is the gate: the twin must agree with the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.core.config import allowed_cpus

MODEL_FILE = "model.onnx"
SPEC_FILE = "spec.json"
TOLERANCE = 1e-5


class CompiledModelError(RuntimeError):
    """The compiled model cannot be built or disagrees with the scikit-learn pipeline."""


@dataclass(frozen=True)
class InputSpec:
    """How feature columns become the forest's input matrix (the pipeline's column order)."""

    categorical: dict[str, list[str]]  # column -> categories in one-hot order
    numeric: list[str]  # passthrough columns, in order after the one-hot block
    n_inputs: int


def input_spec(pipeline: Any) -> InputSpec:
    """Read the fitted ColumnTransformer: one-hot blocks first, then the passthrough columns."""
    prep = pipeline.named_steps["prep"]
    categorical: dict[str, list[str]] = {}
    numeric: list[str] = []
    for name, transformer, cols in prep.transformers_:
        if name == "remainder":
            identity = transformer == "passthrough" or (
                transformer.__class__.__name__ == "FunctionTransformer" and transformer.func is None
            )
            if not identity:
                raise CompiledModelError(f"unsupported remainder {transformer!r}")
            numeric = [c if isinstance(c, str) else str(prep.feature_names_in_[c]) for c in cols]
        elif len(cols):
            if transformer.__class__.__name__ != "OneHotEncoder":
                raise CompiledModelError(f"unsupported transformer {name}: {transformer!r}")
            for col, cats in zip(cols, transformer.categories_, strict=True):
                categorical[str(col)] = [str(c) for c in cats]
    n_inputs = sum(len(c) for c in categorical.values()) + len(numeric)
    forest = pipeline.named_steps["forest"]
    if n_inputs != forest.n_features_in_:
        raise CompiledModelError(
            f"input spec has {n_inputs} columns, forest {forest.n_features_in_}"
        )
    return InputSpec(categorical, numeric, n_inputs)


class Encoder:
    """The pipeline's preprocessing replayed in numpy: named feature columns to the forest's
    input matrix (one-hot by index lookups, then the numeric block), no pandas."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.offsets: dict[str, tuple[int, dict[str, int]]] = {}
        pos = 0
        for col, cats in spec.categorical.items():
            self.offsets[col] = (pos, {c: i for i, c in enumerate(cats)})
            pos += len(cats)
        self.numeric_start = pos

    def matrix(self, columns: Mapping[str, Any] | pd.DataFrame) -> np.ndarray:
        """The forest's float32 input from named feature columns (arrays or a DataFrame)."""
        first = next(iter(columns), None)  # a column's name (a dict's key or a frame's)
        n = 0 if first is None else len(columns[str(first)])
        X = np.zeros((n, self.spec.n_inputs), dtype=np.float32)
        for col, (start, index) in self.offsets.items():
            for row, value in enumerate(np.asarray(columns[col], dtype=object).tolist()):
                k = index.get(value)
                if k is not None:  # unknown category: all zeros, like handle_unknown="ignore"
                    X[row, start + k] = 1.0
        if self.spec.numeric:  # one conversion for the whole numeric block (float64 -> float32)
            block = [np.asarray(columns[c], dtype=np.float64) for c in self.spec.numeric]
            X[:, self.numeric_start :] = np.array(block, dtype=np.float32).T
        return X

    def owners(self) -> list[str]:
        """For each input column of the forest, the feature column it encodes."""
        out = [col for col, cats in self.spec.categorical.items() for _ in cats]
        return out + list(self.spec.numeric)


def _register_xgboost() -> None:
    """skl2onnx converts XGBoost (alone or in a soft vote) with onnxmltools' converter."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from xgboost import XGBClassifier

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


def compile_pipeline(pipeline: Any) -> tuple[bytes, InputSpec]:
    """ONNX bytes of the pipeline's model (a forest, boosted trees or their soft vote;
    probabilities as a plain tensor) + its input spec."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    spec = input_spec(pipeline)
    if _uses_xgboost(pipeline.named_steps["forest"]):
        _register_xgboost()
    forest = pipeline.named_steps["forest"]
    xgboost = _uses_xgboost(forest)
    onx = to_onnx(
        forest,
        initial_types=[("X", FloatTensorType([None, spec.n_inputs]))],
        options={id(forest): {"zipmap": False}},
        # onnxmltools' XGBoost converter writes the ai.onnx.ml 3 tree ensembles
        target_opset={"": 17, "ai.onnx.ml": 3} if xgboost else None,
    )
    return onx.SerializeToString(), spec


def _uses_xgboost(model: Any) -> bool:
    members = [m for _, m in getattr(model, "estimators", [])] or [model]
    return any(type(m).__name__ == "XGBClassifier" for m in members)


# Batches at least this large run on the multi-threaded session when there is one: ONNX Runtime
# splits the trees between threads. Measured here (2 cores, 100-tree champion, random rows,
# caches flushed between runs): 100 rows 232 -> 140 µs with 2 threads, 1,000 rows 1,972 ->
# 1,162 µs; one row is slower threaded (35 -> 52 µs: waking the pool costs more than it
# saves), 12 rows even. Per-thread float32 sums move probabilities by ~1e-8 (gate: 1e-5).
PARALLEL_ROWS = 64


def _session(onnx_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads sleep instead of spinning: the other core serves other work
    # (the load generator, Redis, a second worker).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


class CompiledModel:
    """Feature columns -> fraud probabilities with ONNX Runtime: a single-threaded session,
    plus one with ``threads`` threads for batches of :data:`PARALLEL_ROWS` rows or more
    (see :meth:`session_for`)."""

    def __init__(self, onnx_bytes: bytes, spec: InputSpec, threads: int = 1) -> None:
        self.session = _session(onnx_bytes, 1)
        self.parallel = _session(onnx_bytes, threads) if threads > 1 else None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[1].name  # probabilities
        self.spec = spec
        self.encoder = Encoder(spec)

    @classmethod
    def load(cls, folder: Path, threads: int = 1) -> CompiledModel:
        spec = InputSpec(**json.loads((folder / SPEC_FILE).read_text()))
        return cls((folder / MODEL_FILE).read_bytes(), spec, threads)

    def matrix(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The forest's float32 input from named feature columns (arrays or a DataFrame)."""
        return self.encoder.matrix(columns)

    def predict_proba(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Probability of fraud per row."""
        if not len(columns) or len(next(iter(columns.values()))) == 0:
            return np.zeros(0)
        X = self.matrix(columns)
        out = self.session_for(len(X)).run([self.output_name], {self.input_name: X})[0]
        return np.asarray(out[:, 1], dtype=np.float64)

    def session_for(self, rows: int) -> Any:
        """The session for a batch: the threaded one for large batches while this process may
        run on more than one CPU (checked per batch, one syscall: a process pinned to one
        CPU after start, e.g. by taskset or a cpuset change, would otherwise have its threads
        take turns on that CPU: measured 12 % slower for 100-row batches)."""
        if self.parallel is not None and rows >= PARALLEL_ROWS and allowed_cpus() > 1:
            return self.parallel
        return self.session


def save(onnx_bytes: bytes, spec: InputSpec, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))


def max_abs_difference(
    pipeline: Any, compiled: CompiledModel, frame: pd.DataFrame, rows: int = 10_000
) -> float:
    """Largest |p_sklearn - p_compiled| over up to ``rows`` rows of ``frame``."""
    sample = frame.iloc[:rows]
    expected = pipeline.predict_proba(sample)[:, 1]
    got = compiled.predict_proba({c: sample[c].to_numpy() for c in sample.columns})
    return float(np.max(np.abs(expected - got))) if len(sample) else 0.0


def verify(pipeline: Any, compiled: CompiledModel, frame: pd.DataFrame) -> float:
    """The serving gate: raise unless the compiled model matches the pipeline to 1e-5."""
    diff = max_abs_difference(pipeline, compiled, frame)
    if not diff <= TOLERANCE:
        raise CompiledModelError(
            f"compiled model differs from the scikit-learn pipeline by {diff:.2e} > {TOLERANCE}"
        )
    return diff
