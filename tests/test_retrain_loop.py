"""The loop, end to end: v1 trained on simulated files and served by `bentoml serve` with its
decisions logged to PostgreSQL; two simulated weeks streamed through /predict with the frauds
sent to /feedback after the label delay (`fraudops replay`); a retraining from the decision
log, gated against v1 on the same hold-out and registered with the window it came from."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from training import champion_check, pipeline, registry
from training.cli import app
from training.core import decision_store as ds
from training.core import schema
from training.core.config import Settings
from training.demo.simulate import save_config

from .conftest import SMALL, free_port
from .servers import KEY, PG, bento_server, psql

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.postgres]
WEEKS = 14  # the second week's traffic is what lets the first week's labels mature


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    db = f"fraud_loop_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db}")
    try:
        yield f"{PG}/{db}"
    finally:
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def wait_delivered(url: str, decisions: int, timeout: float = 60) -> None:
    engine = ds.engine_for(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                got = ds.count(conn, ds.decisions)
            if got == decisions:
                return
            assert time.monotonic() < deadline, f"{got} of {decisions} decisions delivered"
            time.sleep(0.3)
    finally:
        engine.dispose()


def test_served_decisions_and_labels_retrain_a_gated_candidate(
    champion,
    small_raw: pd.DataFrame,
    small_feats: pd.DataFrame,
    small_data_dir: Path,
    store: str,
    tmp_path: Path,
) -> None:
    # v1: the session champion, registered again in a registry of its own (nothing shared moves)
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        mlflow_artifact_root=tmp_path / "mlruns" / "artifacts",
        registered_model="fraud-detector-loop",
        decision_db_url=store,
        training_source="db",
    )
    client = registry.configure(settings)
    v1 = registry.log_training(
        champion["result"], small_raw, small_feats, settings, dataset="small files"
    )
    client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, v1.version)

    root = tmp_path / "demo"
    root.mkdir()
    save_config(SMALL, root)  # the simulated dataset the service's model came from
    port = free_port()
    env = {"BENTOML_DO_NOT_TRACK": "True", "FRAUD_DECISION_DB_URL": store}
    with bento_server(port, env, tmp_path / "serve.log") as url:
        run = CliRunner().invoke(
            app,
            ["replay", "--days", str(WEEKS), "--labels", "--data-root", str(root), "--url", url],
            env={"FRAUD_KEY": KEY},
        )
        assert run.exit_code == 0, run.output
        print(run.output)
        streamed = pd.concat(  # what was sent: the 14 days after the small set
            [small_raw.head(0), _next_days(root)], ignore_index=True
        )
        wait_delivered(store, len(streamed))

    week1 = streamed[streamed[schema.TX_DATETIME] < streamed[schema.TX_DATETIME].min().normalize()
                     + pd.Timedelta(days=7)]  # fmt: skip
    frauds = set(week1.loc[week1[schema.TX_FRAUD] == 1, schema.TRANSACTION_ID])
    assert f"{len(frauds):,} fraud labels sent" in run.output.replace("\n", " ")

    loaded = pipeline.load_data(settings, small_data_dir)
    tags = loaded.tags
    logged = loaded.raw[loaded.raw[schema.TX_DATETIME] >= week1[schema.TX_DATETIME].min()]
    # the label policy: the matured days are labelled as sent, the rest are genuine
    assert set(logged.loc[logged[schema.TX_FRAUD] == 1, schema.TRANSACTION_ID]) == frauds
    assert int(tags["data.labelled"]) == len(frauds)
    assert int(tags["data.logged"]) + int(tags["data.waiting_for_labels"]) == len(streamed)
    assert int(tags["data.backfilled_from_files"]) == len(small_raw)
    # the weeks' own features, recomputed from the raw columns, are the ones the service used
    assert loaded.window is not None
    assert len(loaded.window.logged.logged_features) == int(tags["data.logged"])

    cand = pipeline.train_candidate(
        settings, small_data_dir, grid={"n_estimators": [50]}, loaded=loaded
    )
    run_tags = client.get_run(cand.run_id).data.tags
    assert run_tags["data.source"] == "decision_log"
    assert run_tags["data.as_of"] == tags["data.as_of"] and run_tags["data.labelled"]
    # the hold-out is the logged week whose labels are in
    assert run_tags["data.test_start"] == f"{week1[schema.TX_DATETIME].min():%Y-%m-%d}"
    dep = pipeline.deploy_candidate(settings, cand.version, small_data_dir, loaded=loaded)
    assert dep.previous_champion == v1.version
    assert dep.champion_metrics is not None and dep.candidate_metrics  # the same hold-out
    assert dep.champion == (cand.version if dep.promoted else v1.version), dep.reason
    print(f"loop: v{cand.version} {'promoted' if dep.promoted else 'kept'}: {dep.reason}")

    # the DAG's performance check on live labels: what the service answered that week
    health = champion_check.check_champion(settings, small_data_dir, loaded=loaded)
    assert health.source == "decision_log"
    assert health.live["all"]["n"] == len(week1) and health.live["all"]["frauds"] == len(frauds)
    assert 0 <= health.live["all"]["precision"] <= 1 and health.live["all"]["recall"] > 0


def _next_days(root: Path) -> pd.DataFrame:
    from training.demo.replay import next_days

    return next_days(root, WEEKS)


def test_a_training_serving_skew_stops_the_retraining(store: str, small_data_dir: Path) -> None:
    """A logged feature the one definition does not reproduce is a skew: the window is refused,
    naming the feature (runs after the loop, on its store)."""
    import sqlalchemy as sa

    settings = Settings(decision_db_url=store, training_source="db")
    engine = ds.engine_for(store)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(ds.decisions.c.transaction_id, ds.decisions.c.features)
            .where(~ds.decisions.c.degraded)
            .order_by(ds.decisions.c.tx_time)
            .limit(1)
        ).one()
        skewed = {**row.features, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 999.0}
        conn.execute(
            sa.update(ds.decisions)
            .where(ds.decisions.c.transaction_id == row.transaction_id)
            .values(features=skewed)
        )
    engine.dispose()
    with pytest.raises(pipeline.PipelineError, match="CUSTOMER_ID_NB_TX_1DAY_WINDOW"):
        pipeline.load_data(settings, small_data_dir)
