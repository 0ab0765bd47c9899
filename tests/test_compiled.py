"""The compiled twin (ONNX Runtime) gives the scikit-learn pipeline's probabilities."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from training import data
from training import train as train_mod
from training.core import compiled, features, schema
from training.train import Candidate


@pytest.fixture(scope="module")
def fitted(small_raw: pd.DataFrame, small_feats: pd.DataFrame):
    layout = data.handbook_layout(small_raw, n_folds=1)
    cols = features.feature_names(features.FeatureConfig(), categorical=True)
    pipe, _ = train_mod.fit_and_score(
        Candidate(n_estimators=40, max_depth=12),
        small_feats[cols],
        small_raw,
        layout.final,
        True,
        data.day_index(small_raw),
    )
    return pipe, small_feats[cols]


def test_matches_pipeline_on_10000_rows(fitted) -> None:
    pipe, frame = fitted
    onnx_bytes, spec = compiled.compile_pipeline(pipe)
    twin = compiled.CompiledModel(onnx_bytes, spec)
    assert len(frame) >= 10_000
    diff = compiled.max_abs_difference(pipe, twin, frame, rows=10_000)
    assert diff <= compiled.TOLERANCE
    assert compiled.verify(pipe, twin, frame) == diff
    assert list(spec.categorical) == ["MERCHANT_CATEGORY"]


def test_unknown_category_is_ignored_like_sklearn(fitted) -> None:
    pipe, frame = fitted
    twin = compiled.CompiledModel(*compiled.compile_pipeline(pipe))
    odd = frame.head(50).copy()
    odd["MERCHANT_CATEGORY"] = "never-seen"
    expected = pipe.predict_proba(odd)[:, 1]
    got = twin.predict_proba({c: odd[c].to_numpy() for c in odd.columns})
    assert np.abs(expected - got).max() <= compiled.TOLERANCE


def test_a_different_model_fails_the_gate(fitted, small_raw, small_feats) -> None:
    pipe, frame = fitted
    layout = data.handbook_layout(small_raw, n_folds=1)
    other, _ = train_mod.fit_and_score(
        Candidate(n_estimators=5, max_depth=3),
        frame,
        small_raw,
        layout.final,
        True,
        data.day_index(small_raw),
    )
    wrong = compiled.CompiledModel(*compiled.compile_pipeline(other))
    with pytest.raises(compiled.CompiledModelError, match="differs"):
        compiled.verify(pipe, wrong, frame)


def test_without_categorical_fields(small_raw: pd.DataFrame, tmp_path) -> None:
    plain = small_raw.drop(columns=[schema.TX_CHANNEL, schema.MERCHANT_CATEGORY])
    feats = features.offline_features(plain)
    layout = data.handbook_layout(plain, n_folds=1)
    pipe, _ = train_mod.fit_and_score(
        Candidate(n_estimators=20), feats, plain, layout.final, False, data.day_index(plain)
    )
    onnx_bytes, spec = compiled.compile_pipeline(pipe)
    assert spec.categorical == {}
    compiled.save(onnx_bytes, spec, tmp_path)
    twin = compiled.CompiledModel.load(tmp_path)
    assert compiled.verify(pipe, twin, feats) <= compiled.TOLERANCE


def test_large_batches_on_two_threads_give_the_same_probabilities(
    fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, frame = fitted
    onnx_bytes, spec = compiled.compile_pipeline(pipe)
    single = compiled.CompiledModel(onnx_bytes, spec)
    threaded = compiled.CompiledModel(onnx_bytes, spec, threads=2)
    assert single.parallel is None and threaded.parallel is not None
    for n in (1, compiled.PARALLEL_ROWS - 1, compiled.PARALLEL_ROWS, 1000):
        cols = {c: frame[c].to_numpy()[:n] for c in frame.columns}
        # the trees' float32 votes are summed per thread, then together: ~1e-8 apart
        np.testing.assert_allclose(
            threaded.predict_proba(cols), single.predict_proba(cols), rtol=0, atol=1e-6
        )
    allowed = os.sched_getaffinity(0)
    if len(allowed) > 1:  # pinned to one CPU, large batches stay on the single-thread session
        assert threaded.session_for(compiled.PARALLEL_ROWS) is threaded.parallel
        os.sched_setaffinity(0, {min(allowed)})
        try:
            assert threaded.session_for(compiled.PARALLEL_ROWS) is threaded.session
        finally:
            os.sched_setaffinity(0, allowed)
    assert threaded.session_for(compiled.PARALLEL_ROWS - 1) is threaded.session
    assert single.session_for(1000) is single.session
    monkeypatch.delattr("os.sched_getaffinity")  # macOS: the machine's CPU count decides
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert threaded.session_for(compiled.PARALLEL_ROWS) is threaded.session
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert threaded.session_for(compiled.PARALLEL_ROWS) is threaded.parallel
    monkeypatch.undo()
    big = {c: frame[c].to_numpy()[:1000] for c in frame.columns}
    assert np.abs(
        threaded.predict_proba(big) - pipe.predict_proba(frame.head(1000))[:, 1]
    ).max() <= (compiled.TOLERANCE)


def test_model_threads_setting(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from training.core import config

    assert config.Settings(model_threads=3).model_thread_count() == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    assert config.Settings(model_threads=0).model_thread_count() == 1  # pinned to one CPU
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    cpu_max = tmp_path / "cpu.max"
    for quota, cpus in [("max 100000", 4), ("150000 100000", 1), ("50000 100000", 1)]:
        cpu_max.write_text(quota + "\n")  # cgroup v2: a container's CPU limit
        assert config.usable_cpus(cpu_max) == cpus
    assert config.usable_cpus(tmp_path / "absent") == 4
    monkeypatch.delattr("os.sched_getaffinity")  # macOS: no affinity, the machine's CPUs
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert config.allowed_cpus() == 6
    assert config.usable_cpus(tmp_path / "absent") == 6
    monkeypatch.setattr(config, "usable_cpus", lambda: 4)
    assert config.Settings(model_threads=0).model_thread_count() == 2


@pytest.mark.parametrize(
    "candidate",
    [
        Candidate(family="xgb", n_estimators=60, boost_depth=5, balancing="none"),
        Candidate(family="xgb", n_estimators=40, boost_depth=4, balancing="undersample"),
        Candidate(family="ensemble", n_estimators=30, max_depth=10, boost_depth=4),
    ],
    ids=lambda c: c.name,
)
def test_boosted_and_ensemble_candidates_pass_the_same_gate(
    candidate: Candidate, small_raw: pd.DataFrame, small_feats: pd.DataFrame
) -> None:
    """XGBoost alone and its soft vote with a forest: fitted, scored, compiled to ONNX and
    held to the same 1e-5 parity gate on 10,000 rows, with a serving cost."""
    layout = data.handbook_layout(small_raw, n_folds=1)
    cols = features.feature_names(features.FeatureConfig(), categorical=True)
    pipe, fold = train_mod.fit_and_score(
        candidate, small_feats[cols], small_raw, layout.final, True, data.day_index(small_raw)
    )
    assert fold.metrics["ap"] > 0.3 and fold.comparisons > 0
    twin = compiled.CompiledModel(*compiled.compile_pipeline(pipe))
    diff = compiled.verify(pipe, twin, small_feats[cols])
    assert diff <= compiled.TOLERANCE
    odd = small_feats[cols].head(50).assign(MERCHANT_CATEGORY="never-seen")
    np.testing.assert_allclose(
        twin.predict_proba({c: odd[c].to_numpy() for c in odd.columns}),
        pipe.predict_proba(odd)[:, 1],
        atol=compiled.TOLERANCE,
    )


def test_boosted_candidates_take_no_class_weight() -> None:
    with pytest.raises(ValueError, match="class_weight is for random forests"):
        train_mod.build_model(Candidate(family="xgb", balancing="class_weight"))
    with pytest.raises(ValueError, match="model family"):
        train_mod.build_model(Candidate(family="svm"))
    names = {c.family for c in train_mod.candidates("standard")}
    assert names == {"rf", "xgb", "ensemble"}
    assert {c.family for c in train_mod.candidates("quick")} == {"rf"}
