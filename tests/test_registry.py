"""MLflow logging and the champion gate, on SQLite and on a real `mlflow server` + PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from training import data, registry
from training import train as train_mod
from training.core.config import Settings

from .conftest import free_port
from .servers import mlflow_server

WEAK = {"n_estimators": [5], "max_depth": [3]}
WORST = {"n_estimators": [1], "max_depth": [1]}
GOOD = {"n_estimators": [60], "max_depth": [20]}


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres-server", marks=[pytest.mark.postgres, pytest.mark.server]),
    ],
)
def settings(request, tmp_path_factory) -> Iterator[Settings]:
    work = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        yield Settings(
            mlflow_tracking_uri=f"sqlite:///{work}/mlflow.db",
            mlflow_artifact_root=work / "artifacts",
            registered_model="gate-test",
        )
        return
    with mlflow_server(work, free_port()) as uri:
        yield Settings(mlflow_tracking_uri=uri, registered_model="gate-test")
    # the server is gone: MLflow's process-wide tracking URI back to the session's store (a
    # later module calling MLflow before configuring it would reach the dead server)
    mlflow.set_tracking_uri(Settings().mlflow_tracking_uri)


def _register(settings: Settings, raw: pd.DataFrame, feats: pd.DataFrame, grid: dict):
    layout = data.handbook_layout(raw, n_folds=1)
    result = train_mod.train(raw, feats, layout, grid=grid)
    reg = registry.log_training(result, raw, feats, settings, dataset="small")
    return reg, layout


def test_gate_promotes_only_better(settings: Settings, small_raw, small_feats) -> None:
    client = registry.configure(settings)
    name = settings.registered_model
    first, layout = _register(settings, small_raw, small_feats, WEAK)
    d1 = registry.gate(client, name, first.version, small_raw, small_feats, layout.final, 0.0)
    assert d1.promoted and "first model" in d1.reason
    assert registry.champion_version(client, name) == first.version

    worse, _ = _register(settings, small_raw, small_feats, WORST)
    d2 = registry.gate(client, name, worse.version, small_raw, small_feats, layout.final, 0.0)
    assert not d2.promoted
    assert d2.candidate["ap"] < d2.champion["ap"]  # type: ignore[index]
    assert registry.champion_version(client, name) == first.version
    assert (
        str(client.get_model_version_by_alias(name, registry.CHALLENGER).version) == worse.version
    )

    better, _ = _register(settings, small_raw, small_feats, GOOD)
    d3 = registry.gate(client, name, better.version, small_raw, small_feats, layout.final, 0.0)
    assert d3.promoted, d3.reason
    assert registry.champion_version(client, name) == better.version
    # A margin larger than any possible gain blocks promotion.
    d4 = registry.gate(client, name, first.version, small_raw, small_feats, layout.final, 1.0)
    assert not d4.promoted
    assert registry.champion_version(client, name) == better.version


def test_run_logs_everything(settings: Settings, small_raw, small_feats, tmp_path: Path) -> None:
    registry.configure(settings)
    reg, _ = _register(settings, small_raw, small_feats, WEAK)
    client = MlflowClient()
    run = client.get_run(reg.run_id)
    assert {
        "test_auc",
        "test_ap",
        "test_cp100",
        "test_precision",
        "test_recall",
        "test_f1",
        "test_accuracy",
        "val_ap_mean",
    } <= set(run.data.metrics)
    assert run.data.tags["feature_set_version"]
    assert run.data.tags["git_commit"]
    assert run.data.tags["data.train_start"] < run.data.tags["data.test_start"]
    arts = {a.path for a in client.list_artifacts(reg.run_id)}
    assert {
        "plots",
        "evaluation.json",
        "candidates.csv",
        "model_info.json",
        "feature_state",
    } <= arts
    plots = {Path(a.path).name for a in client.list_artifacts(reg.run_id, "plots")}
    assert {
        "roc_curve.png",
        "pr_curve.png",
        "confusion_matrix.png",
        "feature_importances.png",
        "shap_importance.png",
        "shap_importance.csv",
        "shap_beeswarm.png",
    } <= plots
    # the global SHAP picture: mean |SHAP| over held-out rows, one row per model feature
    shap_csv = Path(client.download_artifacts(reg.run_id, "plots/shap_importance.csv"))
    shap_imp = pd.read_csv(shap_csv)
    assert set(shap_imp["feature"]) == set(reg_info_columns(client, reg))
    assert (shap_imp["mean_abs_shap"] >= 0).all() and shap_imp["mean_abs_shap"].max() > 0
    assert list(shap_imp["mean_abs_shap"]) == sorted(shap_imp["mean_abs_shap"], reverse=True)
    assert run.data.metrics["shap_sample_rows"] > 100
    mv = client.get_model_version(settings.registered_model, reg.version)
    assert {"threshold", "feature_set_version", "git_commit", "data.train_start"} <= set(mv.tags)
    info = mlflow.models.get_model_info(reg.model_uri)
    assert info.signature is not None
    assert info.metadata["threshold"] == pytest.approx(float(mv.tags["threshold"]), abs=1e-6)
    model = mlflow.sklearn.load_model(reg.model_uri)
    cols = info.metadata["feature_columns"]
    proba = model.predict_proba(small_feats[cols].head(50))[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()
    nested = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{reg.run_id}'"
    )
    assert len(nested) == 1  # one candidate in this grid, logged as a nested run


def reg_info_columns(client, reg) -> list[str]:
    """The registered model's feature columns (its model_info.json artefact)."""
    path = Path(client.download_artifacts(reg.run_id, "model_info.json"))
    return list(json.loads(path.read_text())["feature_columns"])
