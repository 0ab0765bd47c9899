"""The DAGs run end to end with `dag.test()`: Airflow metadata on PostgreSQL, a real
`mlflow server` on PostgreSQL, local webhook and SMTP receivers, and a running `bentoml serve`
that is hot-swapped under load."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from training import pipeline, registry
from training.core.config import Settings, get_settings
from training.core.schema import request_bodies
from training.demo.simulate import SimulationConfig, save_config, simulate, write_per_day

from ..conftest import free_port
from ..observability import Mailbox, Receiver
from ..servers import AUTH, KEY, PROJECT, bento_server, mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.server]
DATA = SimulationConfig(n_customers=600, n_terminals=1200, n_days=75, seed=21)
GOOD = {"n_estimators": [40], "max_depth": [12]}
WORSE = {"n_estimators": [1], "max_depth": [1]}
MODEL, BENTO_MODEL = "fraud-detector-af", "fraud_detector_af"


@pytest.fixture(scope="module")
def env(airflow_db, tmp_path_factory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("airflow-runs")
    root = work / "demo"
    write_per_day(simulate(DATA), root / "transactions")
    save_config(DATA, root)
    with (
        mlflow_server(work, free_port()) as uri,
        Receiver() as webhook,
        Mailbox(free_port()) as mailbox,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in {
            "MLFLOW_TRACKING_URI": uri,
            "FRAUD_DATA_DIR": str(root),
            "FRAUD_EXPERIMENT_NAME": "airflow-test",
            "FRAUD_REGISTERED_MODEL": MODEL,
            "FRAUD_BENTO_MODEL": BENTO_MODEL,
            "FRAUD_BENTOS_DIR": str(work / "bentos"),
            "FRAUD_DECISION_DB_URL": f"sqlite:///{work}/decisions.db",
            "FRAUD_NOTIFY_WEBHOOK_URL": webhook.url,
            "FRAUD_NOTIFY_SMTP_HOST": "127.0.0.1",
            "FRAUD_NOTIFY_SMTP_PORT": str(mailbox.port),
            "FRAUD_NOTIFY_EMAIL_TO": "fraud-team@example.com",
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        yield {"work": work, "root": root, "webhook": webhook, "mailbox": mailbox, "runs": {}}
        get_settings.cache_clear()


def get_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


def asset_events() -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(
            session.scalar(
                select(func.count(AssetEvent.id))
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetModel.name == "fraud_champion")
            )
            or 0
        )


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_retrain_promotes_a_better_model_then_keeps_a_worse_one(env) -> None:
    dag = get_dag("fraud_retrain")
    settings = Settings()
    client = registry.configure(settings)
    webhook, mailbox = env["webhook"], env["mailbox"]

    t0 = time.perf_counter()
    first = dag.test(run_conf={"grid": GOOD})
    first_s = time.perf_counter() - t0
    assert str(first.state) == "success", states(first)
    assert states(first)["publish_champion"] == "success"
    assert states(first)["decision_retention"] == "success"
    assert registry.champion_version(client, MODEL) == "1"
    assert asset_events() == 1
    assert len(webhook.bodies) == 1 and "promoted to champion" in webhook.texts()
    assert "Data: " in webhook.texts() and "new days 2018-06-15" in webhook.texts()
    subject, body = mailbox.messages[-1]
    assert subject == "[fraud-mlops] v1 promoted to champion" and "AP" in body

    t0 = time.perf_counter()
    second = dag.test(run_conf={"grid": WORSE})
    second_s = time.perf_counter() - t0
    assert str(second.state) == "success", states(second)
    assert states(second)["publish_champion"] == "skipped"
    assert registry.champion_version(client, MODEL) == "1"
    assert str(client.get_model_version_by_alias(MODEL, registry.CHALLENGER).version) == "2"
    assert asset_events() == 1  # no promotion, no event
    last = webhook.bodies[-1]["text"]
    assert "v2 not promoted" in last and "kept as challenger" in last and "Reason: AP" in last
    assert mailbox.messages[-1][0] == "[fraud-mlops] v2 not promoted"
    env["runs"].update(first=first.run_id, second=second.run_id)
    print(f"\nfraud_retrain wall time: promoted run {first_s:.1f}s, kept run {second_s:.1f}s")


def test_rerunning_a_day_duplicates_nothing(env) -> None:
    run_id = env["runs"]["first"]
    settings = Settings()
    data_path = env["root"] / "transactions"
    files = sorted(data_path.glob("*.parquet"))
    report = pipeline.prepare_data(settings, data_path, run_key=run_id)
    assert report.appended == [] and sorted(data_path.glob("*.parquet")) == files
    again = pipeline.train_candidate(settings, data_path, run_key=run_id, grid=WORSE)
    assert again.reused and again.version == "1"
    assert pipeline.already_notified(settings, "1", run_id)
    client = registry.configure(settings)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2


def log_decisions(url: str, files: pd.DataFrame, new: pd.DataFrame, version: str) -> None:
    """``new`` written to the decision store as the service would have logged it: amounts in
    cents, the features of the one definition over the files and ``new``."""
    from datetime import UTC

    from training.core import decision_store as ds
    from training.core import features

    new = new.assign(TX_AMOUNT=(new["TX_AMOUNT"] * 100).round() / 100)
    both = pd.concat([files, new], ignore_index=True)
    feats = features.offline_features(both).iloc[len(files) :]
    names = [c for c in feats.columns if c not in files.columns or c == "TX_AMOUNT"]
    rows = []
    for (_, tx), (_, f) in zip(new.iterrows(), feats.iterrows(), strict=True):
        t = tx["TX_DATETIME"].to_pydatetime().replace(tzinfo=UTC)
        rows.append(
            {
                "transaction_id": str(tx["TRANSACTION_ID"]), "tx_time": t, "tx_day": t.date(),
                "customer_id": str(tx["CUSTOMER_ID"]), "terminal_id": str(tx["TERMINAL_ID"]),
                "amount_cents": round(tx["TX_AMOUNT"] * 100), "channel": tx["TX_CHANNEL"],
                "merchant_category": tx["MERCHANT_CATEGORY"],
                "features": {n: f[n] if isinstance(f[n], str) else float(f[n]) for n in names},
                "model_name": BENTO_MODEL, "model_version": version, "probability": 0.5,
                "threshold": 0.5, "is_fraud": False, "degraded": False, "api_key": "tests",
                "worker": "w1", "received_at": t, "kind": ds.SCORED,
            }
        )  # fmt: skip
    ds.upgrade(url)
    engine = ds.engine_for(url)
    with engine.begin() as conn:
        ds.write(conn, rows, [])
        frauds = new.loc[new["TX_FRAUD"] == 1]
        ds.write(conn, [], [
            {"event_id": f"w1:{i}", "transaction_id": str(tx), "is_fraud": True,
             "labelled_at": rows[-1]["tx_time"], "api_key": "tests"}
            for i, tx in enumerate(frauds["TRANSACTION_ID"])
        ])  # fmt: skip
    engine.dispose()


def test_retrain_from_the_decision_log(env, monkeypatch: pytest.MonkeyPatch) -> None:
    """FRAUD_TRAINING_SOURCE=db: data_prep fixes the window from the log (its as_of), the
    training and the gate read that same window, the version records it."""
    from training.data import load_transactions
    from training.demo.replay import next_days

    settings = Settings()
    files = load_transactions(env["root"] / "transactions")
    log_decisions(settings.decision_db_url, files, next_days(env["root"], 14), "1")
    monkeypatch.setenv("FRAUD_TRAINING_SOURCE", "db")
    run = get_dag("fraud_retrain").test(run_conf={"grid": WORSE, "append_days": 1})
    assert str(run.state) == "success", states(run)
    ti = {t.task_id: t for t in run.get_task_instances()}
    prepared = ti["data_prep"].xcom_pull(task_ids="data_prep")
    trained = ti["training"].xcom_pull(task_ids="training")
    assert prepared["source"] == "decision_log" and prepared["appended"] == []
    client = registry.configure(settings)
    tags = client.get_run(trained["run_id"]).data.tags
    assert tags["data.source"] == "decision_log" and tags["data.as_of"] == prepared["as_of"]
    assert int(tags["data.logged"]) > 0 and int(tags["data.waiting_for_labels"]) > 0
    check = ti["performance_check"].xcom_pull(task_ids="performance_check")
    assert check["source"] == "decision_log" and check["live"]["all"]["n"] > 0


def test_broken_data_fails_loudly(tmp_path) -> None:
    days = tmp_path / "transactions"
    write_per_day(simulate(SimulationConfig(n_customers=200, n_terminals=400, n_days=5)), days)
    victim = sorted(days.glob("*.parquet"))[2]
    import pandas as pd

    pd.read_parquet(victim).head(3).to_parquet(victim)
    with pytest.raises(pipeline.PipelineError, match="under 20% of the median daily volume"):
        pipeline.prepare_data(Settings(), days, append_days=0)
    victim.unlink()
    with pytest.raises(pipeline.PipelineError, match="days without any transaction"):
        pipeline.prepare_data(Settings(), days, append_days=0)


class Traffic(threading.Thread):
    """Single-transaction /predict requests back to back; every answer recorded."""

    def __init__(self, url: str, bodies: list[dict]) -> None:
        super().__init__(daemon=True)
        self.url, self.bodies = url, bodies
        self.halt = threading.Event()
        self.answers: list[tuple[float, int, str | None]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=AUTH) as client:
            i = 0
            while not self.halt.is_set():
                tx = {**self.bodies[i % len(self.bodies)], "transaction_id": f"swap-{i}"}
                try:
                    r = client.post("/predict", json={"transactions": [tx]})
                    version = r.json()[0]["model_version"] if r.status_code == 200 else None
                    self.answers.append((time.monotonic(), r.status_code, version))
                except httpx.HTTPError as exc:
                    self.answers.append((time.monotonic(), 0, repr(exc)))
                i += 1
                time.sleep(0.005)


def test_build_deploy_hot_swaps_the_running_service_under_load(env) -> None:
    from training.delivery import bento_store, release

    settings = Settings()
    client = registry.configure(settings)
    bento_store.import_champion(settings)  # v1, what `make run` would be serving
    port = free_port()
    log = env["work"] / "bento-serve.log"
    server_env = {"FRAUD_PORT": str(port), "BENTOML_DO_NOT_TRACK": "True"}
    raw = simulate(SimulationConfig(**{**DATA.__dict__, "n_days": DATA.n_days + 3}))
    # The first 2,000 transactions after the data the model saw (the service's stream clock
    # refuses a jump of more than a day past its history).
    seen_until = pd.Timestamp(DATA.start_date) + pd.Timedelta(days=DATA.n_days)
    fresh = raw[raw["TX_DATETIME"] >= seen_until]
    bodies = request_bodies(fresh.head(2_000))
    with bento_server(port, server_env, log) as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRAUD_API_URL", url)
        mp.setenv("FRAUD_ADMIN_KEY", KEY)  # the roll-out's hot swap needs scope admin
        get_settings.cache_clear()
        traffic = Traffic(url, bodies)
        traffic.start()
        time.sleep(3)
        promoted_at = time.monotonic()
        client.set_registered_model_alias(MODEL, registry.CHAMPION, "2")  # the promotion
        t0 = time.perf_counter()
        run = get_dag("fraud_build_deploy").test()
        dag_s = time.perf_counter() - t0
        time.sleep(2)
        traffic.halt.set()
        traffic.join(30)
        assert str(run.state) == "success", states(run)
        answers = traffic.answers
        failed = [a for a in answers if a[1] != 200]
        assert not failed, failed[:5]
        versions = [a[2] for a in answers]
        first_new = versions.index("2")
        assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {"2"}
        switch_s = answers[first_new][0] - promoted_at
        assert switch_s < 60, switch_s
        exported = list((env["work"] / "bentos").glob("*.bento"))
        assert len(exported) == 1 and exported[0].stat().st_size > 100_000
        assert states(run)["containerize"] == "success"  # skipped inside: no Docker engine

        # a failed smoke check rolls back: champion and the service return to v1
        with pytest.raises(release.RolloutError):
            release.smoke_prediction(Settings(), "3")
        # MLflow down: the service goes back first all the same, and the error says what is left
        live = Settings()
        mp.setenv("MLFLOW_TRACKING_URI", live.mlflow_tracking_uri)  # mlflow rewrites it below
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        down = live.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
        t_down = time.monotonic()
        with pytest.raises(release.RollbackError, match=r"service is back on v1.*champion"):
            release.rollback(down, "1")
        down_s = time.monotonic() - t_down
        assert httpx.get(f"{url}/health").json()["model"]["version"] == "1"
        assert registry.champion_version(registry.configure(live), MODEL) == "2"
        release.rollback(live, "1")
        assert registry.champion_version(client, MODEL) == "1"
        assert httpx.get(f"{url}/health").json()["model"]["version"] == "1"
    swap = re.search(r"swapped model 1 -> 2 in ([0-9.]+)s", log.read_text())
    assert swap, log.read_text()[-2000:]
    print(
        f"\nfraud_build_deploy wall time {dag_s:.1f}s; promotion -> first v2 answer "
        f"{switch_s:.1f}s; swap {float(swap[1]):.2f}s; {len(answers)} requests during the "
        f"test, {len(failed)} failed; roll-back with MLflow down {down_s:.1f}s"
    )
