"""XGBoost or LightGBM for the boosted candidates: prequential AP and CP@100 on the handbook's
own periods, the ONNX twin's largest gap on the test weeks (the gate is 1e-5), and its time for
one row. LightGBM is not a project dependency: install it for this comparison only.

    uv pip install lightgbm==4.6.0 && python -m tests.bench.boosted_choice; uv sync --frozen
"""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from training import data, evaluate, metrics
from training.core import compiled, features, schema
from training.train import Candidate, build_pipeline

XGB = Candidate(family="xgb", n_estimators=200, boost_depth=4, learning_rate=0.1)


def lightgbm_pipeline() -> Any:
    """The XGBoost candidate's pipeline with LightGBM in its place (the same size of trees)."""
    from lightgbm import LGBMClassifier

    pipe = build_pipeline(XGB, True)
    pipe.steps[-1] = ("forest", LGBMClassifier(
        n_estimators=200, max_depth=4, num_leaves=15, learning_rate=0.1, subsample=0.8,
        subsample_freq=1, colsample_bytree=0.8, n_jobs=-1, random_state=0, verbose=-1,
    ))  # fmt: skip
    return pipe


def compile_lightgbm(pipe: Any) -> compiled.CompiledModel:
    from lightgbm import LGBMClassifier
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import to_onnx, update_registered_converter
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
        convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )  # fmt: skip
    spec = compiled.input_spec(pipe)
    model = pipe.named_steps["forest"]
    onx = to_onnx(
        model, initial_types=[("X", FloatTensorType([None, spec.n_inputs]))],
        options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
    )  # fmt: skip
    return compiled.CompiledModel(onx.SerializeToString(), spec)


def main() -> None:
    raw = data.load_transactions(Path("data/full/transactions"))
    feats = features.offline_features(raw)
    cols = features.feature_names(features.FeatureConfig(), True)
    days = data.day_index(raw)
    first = evaluate.first_day_of(raw, date(2018, 8, 15), 21, int(days.max()))
    splits = data.prequential_splits(raw, days, first, 4)
    y, cust = raw[schema.TX_FRAUD].to_numpy(), raw[schema.CUSTOMER_ID].to_numpy()
    families = (
        ("xgboost", lambda: build_pipeline(XGB, True),
         lambda p: compiled.CompiledModel(*compiled.compile_pipeline(p))),
        ("lightgbm", lightgbm_pipeline, compile_lightgbm),
    )  # fmt: skip
    for name, make, compile_twin in families:
        aps, cps, gaps, micros = [], [], [], []
        for split in splits:
            pipe = make()
            pipe.fit(feats[cols].iloc[split.train], y[split.train])
            test = feats[cols].iloc[split.test]
            scores = pipe.predict_proba(test)[:, 1]
            m = metrics.ranking_metrics(y[split.test], scores, days[split.test], cust[split.test])
            aps.append(m["ap"])
            cps.append(m["cp100"])
            twin = compile_twin(pipe)
            gaps.append(compiled.max_abs_difference(pipe, twin, test, rows=len(test)))
            one = {c: test[c].to_numpy()[:1] for c in cols}
            times = []
            for _ in range(300):
                t0 = time.perf_counter()
                twin.predict_proba(one)
                times.append(time.perf_counter() - t0)
            micros.append(statistics.median(times) * 1e6)
        print(f"{name}: AP {np.mean(aps):.4f} ± {np.std(aps):.4f}, CP@100 {np.mean(cps):.4f} ± "
              f"{np.std(cps):.4f}, ONNX largest gap {max(gaps):.2e}, one row "
              f"{np.median(micros):.1f} µs", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
