"""The whole Compose stack on a local Docker engine (`make stack-test`; not part of `make test`).

Builds every image from a debootstrap Debian base (no registry); `fraud-bootstrap` trains and
registers the first model through the stack's MLflow and containerizes its Bento; the stack
comes up with `--wait` (fraud-api is that image) and every service is healthy; `fraud_retrain`
runs through the Airflow REST API; a promotion makes `fraud_build_deploy` build the new image
and recreate fraud-api with it; transactions scored through fraud-api reach Prometheus and, through
fraud-shipper, PostgreSQL; a worker killed inside fraud-api under load is restarted in place
and loses no answered decision. Tears
everything down (containers, volumes, networks, the bridge, dockerd) even when a step fails;
the images stay cached.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from training.core import api_keys
from training.delivery import release

from . import engine

pytestmark = pytest.mark.stack
FILES = [
    "-f",
    str(engine.PROJECT / "compose.yaml"),
    "-f",
    str(engine.PROJECT / "compose.local.yaml"),
    "--profile",
    "spark",  # the retraining runs on the stack's Spark cluster (FRAUD_ENGINE=spark)
]
MINUTE = timedelta(minutes=1)
SERVICES = {
    "postgres", "mlflow", "fraud-api", "fraud-shipper", "airflow-api", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "prometheus", "alertmanager",
    "spark-master", "spark-worker", "fraud-review",
}  # fmt: skip


def compose(env_file: Path, *args: str, timeout: float = 1800, check: bool = True) -> str:
    cmd = [release.compose_binary(), "--project-directory", str(engine.PROJECT), "--env-file",
           str(env_file), *FILES, *args]  # fmt: skip
    out = subprocess.run(
        cmd, env=engine.docker_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"compose {' '.join(args)}:\n{out.stdout[-4000:]}{out.stderr[-4000:]}")
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("stack")
    env_file = work / "stack.env"
    values = {
        k: secrets.token_urlsafe(18)
        for k in (
            "POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_DB_PASSWORD",
            "DECISIONS_DB_PASSWORD",
            "AIRFLOW_JWT_SECRET", "AIRFLOW_SECRET_KEY",
            "GRAFANA_ADMIN_PASSWORD", "FRAUD_REVIEW_SECRET",
        )
    }  # fmt: skip
    keys = work / "api-keys.json"  # what .env.example tells an operator to do
    admin_key, _ = api_keys.create(keys, "airflow", ["admin", "read"])
    client_key, _ = api_keys.create(keys, "stack-test", ["score", "label", "read"])
    analyst_key, _ = api_keys.create(keys, "alice", ["label", "read"])
    values.update(
        FRAUD_ADMIN_KEY=admin_key,
        FRAUD_API_KEYS_JSON=f"'{api_keys.load(keys).model_dump_json(exclude_none=True)}'",
        DOCKER_SOCKET=str(engine.SOCKET),
        FRAUD_COMPOSE_ENV_FILE="/run/fraud-stack.env",  # mounted by the test's override below
        SLACK_WEBHOOK_URL="http://127.0.0.1:9/unused",
        FRAUD_FIRST_GRID="quick",
        FRAUD_RETRAIN_GRID="quick",  # unpausing also starts the latest scheduled run
        FRAUD_ENGINE="spark",  # the retraining DAG drives the spark profile's cluster
        FRAUD_SAMPLE_GENUINE="0.5",  # on a weighted sample, the hold-out scored on the cluster
    )
    override = work / "compose.test.yaml"
    override.write_text(
        "services:\n  airflow-scheduler:\n    volumes:\n"
        f"      - {env_file}:/run/fraud-stack.env:ro\n"
    )
    FILES.extend(["-f", str(override)])
    t0 = time.monotonic()
    with engine.dockerd():
        try:
            env_file.write_text("".join(f"{k}={v}\n" for k, v in {
                **values, "DOCKER_GID": str(engine.socket_gid())}.items()))  # fmt: skip
            engine.base_images()
            t_build = time.monotonic()
            engine.stack_images()
            engine.log(f"stack images built in {time.monotonic() - t_build:.0f}s")
            t_boot = time.monotonic()
            compose(env_file, "run", "--rm", "fraud-bootstrap", timeout=2400)
            engine.log(f"first model trained and containerized in {time.monotonic() - t_boot:.0f}s")
            t_up = time.monotonic()
            compose(
                env_file, "up", "-d", "--no-build", "--wait", "--wait-timeout", "1200", timeout=1500
            )
            up_s = time.monotonic() - t_up
            engine.log(f"stack healthy in {up_s:.0f}s")
            yield {
                "env": env_file,
                "values": values,
                "up_s": up_s,
                "t0": t0,
                "auth": {"Authorization": f"Bearer {client_key}"},
                "analyst_key": analyst_key,
            }
        except Exception:
            print(compose(env_file, "ps", "-a", check=False))
            print(compose(env_file, "logs", "--tail", "60", check=False)[-20_000:])
            raise
        finally:
            print(compose(env_file, "stats", "--no-stream", "--format",
                          "table {{.Name}}\t{{.MemUsage}}", check=False))  # fmt: skip
            compose(env_file, "down", "-v", "--remove-orphans", "--timeout", "20", check=False)
            engine.docker("image", "prune", "-f", check=False)  # dangling layers of old builds
            engine.log(f"torn down after {time.monotonic() - t0:.0f}s")


def test_every_service_is_healthy(stack) -> None:
    rows = [json.loads(line) for line in compose(stack["env"], "ps", "--format", "json").split("\n")
            if line.startswith("{")]  # fmt: skip
    health = {r["Service"]: r.get("Health") or r["State"] for r in rows}
    assert set(health) >= SERVICES, health
    assert all(health[s] == "healthy" for s in SERVICES), health


def test_first_model_trained_and_registered_through_the_stack_mlflow(stack) -> None:
    versions = httpx.get(
        "http://127.0.0.1:5000/ajax-api/2.0/mlflow/registered-models/get",
        params={"name": "fraud-detector"},
        timeout=30,
    ).json()
    aliases = {a["alias"]: a["version"] for a in versions["registered_model"].get("aliases", [])}
    assert aliases.get("champion") == "1", versions
    health = httpx.get("http://127.0.0.1:8080/health", timeout=30).json()
    assert health["model"]["version"] == "1" and health["model"]["compiled"] is True
    assert len(health["bentoml_fixes"]) >= 7, health  # the containerized Bento applied them


def test_the_docker_check_finds_the_real_engine(monkeypatch: pytest.MonkeyPatch, stack) -> None:
    """What the build-deploy DAG asks before containerizing, against the private dockerd."""
    monkeypatch.setenv("DOCKER_HOST", engine.docker_env()["DOCKER_HOST"])
    assert release.docker_reachable() is True


def airflow_token(stack) -> str:
    raw = compose(stack["env"], "exec", "-T", "airflow-api", "cat",
                  "/opt/airflow/passwords/passwords.json")  # fmt: skip
    password = json.loads(raw[raw.index("{") :])["fraud-admin"]
    r = httpx.post(
        "http://127.0.0.1:8081/auth/token",
        json={"username": "fraud-admin", "password": password},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["access_token"])


def test_retraining_runs_through_the_airflow_rest_api(stack) -> None:
    headers = {"Authorization": f"Bearer {airflow_token(stack)}"}
    api = "http://127.0.0.1:8081/api/v2/dags/fraud_retrain"
    deadline = time.monotonic() + 180
    while httpx.get(api, headers=headers, timeout=30).status_code != 200:  # parsed yet?
        assert time.monotonic() < deadline, "fraud_retrain never appeared in Airflow"
        time.sleep(5)
    httpx.patch(api, headers=headers, json={"is_paused": False}, timeout=30)
    r = httpx.post(
        f"{api}/dagRuns",
        headers=headers,
        json={"logical_date": None, "conf": {"grid": "quick"}},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    t0 = time.monotonic()
    state, summary = wait_run(api, r.json()["dag_run_id"], headers, 1200)
    engine.log(f"fraud_retrain {state} in {time.monotonic() - t0:.0f}s: {summary}")
    assert state == "success", summary
    assert summary["notification"][0] == "success"
    # the candidate came from the Spark cluster: its run's tags say so
    mlflow_api = "http://127.0.0.1:5000/ajax-api/2.0/mlflow"
    version = httpx.get(
        f"{mlflow_api}/model-versions/get",
        params={"name": "fraud-detector", "version": "2"},
        timeout=30,
    ).json()["model_version"]
    run = httpx.get(
        f"{mlflow_api}/runs/get", params={"run_id": version["run_id"]}, timeout=30
    ).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["data.engine"] == "spark" and tags["data.sample_genuine"] == "0.5", tags
    workers = httpx.get("http://127.0.0.1:8090/json/", timeout=30).json()
    assert workers["aliveworkers"] >= 1 and workers["completedapps"], workers


def image_id(ref: str) -> str:
    return engine.docker("image", "inspect", "--format", "{{.Id}}", ref).strip()


def test_first_champion_is_served_from_its_containerized_bento(stack) -> None:
    api = engine.docker("ps", "--filter", "label=com.docker.compose.service=fraud-api",
                        "--format", "{{.Image}}").split()  # fmt: skip
    assert api == ["fraud-detector:champion"], api
    assert image_id("fraud-detector:champion") == image_id("fraud-detector:v1")
    env = engine.docker("image", "inspect", "--format", "{{json .Config.Env}}", "fraud-detector:v1")
    assert "BENTOML_CONTAINERIZED=true" in env  # BentoML's own Dockerfile built it


def wait_run(api: str, run_id: str, headers: dict[str, str], limit_s: float) -> tuple[str, dict]:
    t0 = time.monotonic()
    state = "queued"
    while state in ("queued", "running") and time.monotonic() - t0 < limit_s:
        time.sleep(10)
        state = httpx.get(f"{api}/dagRuns/{run_id}", headers=headers, timeout=30).json()["state"]
    tasks = httpx.get(f"{api}/dagRuns/{run_id}/taskInstances", headers=headers, timeout=30)
    summary = {t["task_id"]: (t["state"], t["duration"]) for t in tasks.json()["task_instances"]}
    return state, summary


def test_promotion_rolls_out_a_new_image_through_fraud_build_deploy(stack) -> None:
    """v2 (registered by the retraining above) is promoted; fraud_build_deploy builds
    fraud-detector:v2 and Compose recreates fraud-api from it, from inside the scheduler."""
    out = compose(stack["env"], "exec", "-T", "airflow-scheduler", "fraudops", "promote", "2",
                  "--force")  # fmt: skip
    assert "champion" in out, out
    headers = {"Authorization": f"Bearer {airflow_token(stack)}"}
    api = "http://127.0.0.1:8081/api/v2/dags/fraud_build_deploy"
    httpx.patch(api, headers=headers, json={"is_paused": False}, timeout=30)
    r = httpx.post(f"{api}/dagRuns", headers=headers, json={"logical_date": None}, timeout=30)
    assert r.status_code in (200, 201), r.text
    t0 = time.monotonic()
    state, summary = wait_run(api, r.json()["dag_run_id"], headers, 1500)
    engine.log(f"fraud_build_deploy {state} in {time.monotonic() - t0:.0f}s: {summary}")
    assert state == "success", summary
    assert image_id("fraud-detector:champion") == image_id("fraud-detector:v2")
    health = httpx.get("http://127.0.0.1:8080/health", timeout=30).json()
    assert health["model"]["version"] == "2", health
    assert httpx.get("http://127.0.0.1:8080/test", timeout=30).status_code == 401
    test = httpx.get("http://127.0.0.1:8080/test", headers=stack["auth"], timeout=30)
    assert test.json()["status"] == "ok"


def test_scored_transactions_reach_prometheus(stack) -> None:
    sample = json.loads((engine.PROJECT / "data" / "sample" / "transactions.json").read_text())
    # Dated on the service's clock (the stream's: where the model's history ends), as a
    # client of the demo would send them; the sample's own dates are weeks later.
    now = httpx.get("http://127.0.0.1:8080/health", timeout=30).json()["clock"]["now"]
    start = datetime.fromisoformat(now.replace("Z", "+00:00"))
    txs = [
        {**t, "transaction_id": f"stack-{i}", "tx_datetime": (start + i * MINUTE).isoformat()}
        for i, t in enumerate(sample)
    ]
    r = httpx.post(
        "http://127.0.0.1:8080/predict",
        json={"transactions": txs},
        headers=stack["auth"],
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()) == len(txs)
    deadline = time.monotonic() + 90
    total = 0.0
    while time.monotonic() < deadline:
        result = httpx.get(
            "http://127.0.0.1:9090/api/v1/query",
            params={"query": 'sum(fraud_predictions_total{job="fraud-api"})'},
            timeout=30,
        ).json()["data"]["result"]
        total = float(result[0]["value"][1]) if result else 0.0
        if total >= len(txs):
            break
        time.sleep(5)
    assert total >= len(txs)
    up = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": "up"}, timeout=30).json()[
        "data"
    ]["result"]
    assert {s["metric"]["job"]: s["value"][1] for s in up}["fraud-api"] == "1"


def test_scored_transactions_reach_the_decision_log_in_postgresql(stack) -> None:
    """The decisions of the test above, in the stack's PostgreSQL (`decisions` database, owned
    by its own user), delivered from fraud-api's journal volume."""
    sql = "SELECT count(*) FROM decisions WHERE transaction_id LIKE 'stack-%'"
    sample = engine.PROJECT / "data" / "sample" / "transactions.json"
    expected = len(json.loads(sample.read_text()))
    deadline = time.monotonic() + 60
    while True:
        out = compose(
            stack["env"], "exec", "-T", "postgres", "psql", "-U", "decisions", "-d", "decisions",
            "-tAc", sql, check=False,
        )  # fmt: skip
        found = out.strip().splitlines()[-1] if out.strip() else ""
        if found == str(expected):
            break
        assert time.monotonic() < deadline, f"decisions in PostgreSQL: {out[-500:]}"
        time.sleep(2)
    health = httpx.get("http://127.0.0.1:8080/health", timeout=30).json()["decision_log"]
    assert health["ok"] and health["backlog_bytes"] == 0, health


def test_an_analyst_gives_a_verdict_through_fraud_review(stack) -> None:
    """fraud-review: sign in with an analyst key, open a logged decision (its action and rule),
    confirm it as fraud; the label reaches PostgreSQL under the analyst's name."""
    import re

    review = httpx.Client(base_url="http://127.0.0.1:8082", timeout=30)

    def csrf(page: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page[-2000:]
        return found.group(1)

    page = review.get("/login")
    r = review.post("/login", data={"key": stack["analyst_key"], "csrf": csrf(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/queue", r.text[-1000:]
    decision = review.get("/decisions/stack-0")
    assert decision.status_code == 200 and "alice" in decision.text, decision.text[-2000:]
    assert re.search(r'id="action">(approve|review|decline)<', decision.text)
    r = review.post("/decisions/stack-0/verdict",
                    data={"verdict": "fraud", "csrf": csrf(decision.text)})  # fmt: skip
    assert r.status_code == 303, r.text[-1000:]
    sql = "SELECT api_key FROM label_events WHERE transaction_id = 'stack-0' AND is_fraud"
    deadline = time.monotonic() + 60
    while "alice" not in compose(
        stack["env"],
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "decisions",
        "-d",
        "decisions",
        "-tAc",
        sql,
        check=False,
    ):
        assert time.monotonic() < deadline, "the analyst's label never reached PostgreSQL"
        time.sleep(2)  # fmt: skip


def test_a_worker_killed_inside_fraud_api_is_restarted_in_place_losing_nothing(stack) -> None:
    """kill -9 of the serving worker inside the fraud-api container, under load: serving.
    supervisor restarts it in the same container (BentoML alone never would, and the container
    would stay up serving nothing); 200s again within 30 s; every answered decision reaches
    PostgreSQL through fraud-shipper."""
    import os
    import signal
    import threading

    (container,) = engine.docker(
        "ps", "-q", "--filter", "label=com.docker.compose.service=fraud-api"
    ).split()
    restarts = engine.docker("inspect", "-f", "{{.RestartCount}}", container).strip()

    def workers() -> list[int]:  # host pids, from `docker top`
        out = engine.docker("top", container, "-eo", "pid,args")
        return [int(line.split()[0]) for line in out.splitlines()[1:]
                if "_bentoml_impl.worker.service" in line]  # fmt: skip

    (victim,) = workers()
    sample = json.loads((engine.PROJECT / "data" / "sample" / "transactions.json").read_text())
    now = httpx.get("http://127.0.0.1:8080/health", timeout=30).json()["clock"]["now"]
    start = datetime.fromisoformat(now.replace("Z", "+00:00")) + 60 * MINUTE
    answered: list[tuple[float, list[str]]] = []  # (when sent, ids) of each 200
    failed: dict[str, int] = {}
    stop = threading.Event()

    def drive() -> None:
        client = httpx.Client(headers=stack["auth"], timeout=5)
        n = 0
        while not stop.is_set():
            ids = [f"kill-{n}-{j}" for j in range(5)]
            txs = [{**sample[(n + j) % len(sample)], "transaction_id": i,
                    "tx_datetime": (start + (5 * n + j) * MINUTE / 60).isoformat()}
                   for j, i in enumerate(ids)]  # fmt: skip
            sent = time.monotonic()
            try:
                r = client.post("http://127.0.0.1:8080/predict", json={"transactions": txs})
                if r.status_code == 200:
                    answered.append((sent, ids))
                else:
                    failed[str(r.status_code)] = failed.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
                time.sleep(0.05)
            n += 1

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    time.sleep(5)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    deadline = t_kill + 60
    while not any(sent > t_kill for sent, _ in answered) and time.monotonic() < deadline:
        time.sleep(0.05)
    back = [sent for sent, _ in answered if sent > t_kill]
    time.sleep(5)
    stop.set()
    driver.join(30)
    assert back, f"no 200 within 60 s of the kill: {failed}"
    back_s = min(back) - t_kill
    ids = sorted(i for _, batch in answered for i in batch)
    sql = "SELECT transaction_id FROM decisions WHERE transaction_id LIKE 'kill-%'"
    deadline = time.monotonic() + 90
    while True:
        out = compose(stack["env"], "exec", "-T", "postgres", "psql", "-U", "decisions", "-d",
                      "decisions", "-tAc", sql, check=False)  # fmt: skip
        missing = set(ids) - set(out.split())
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    engine.log(
        f"kill -9 of the worker in fraud-api under load: 200 again after {back_s:.1f} s; "
        f"{len(ids)} decisions answered, {len(missing)} missing from PostgreSQL; "
        f"not answered {failed}"
    )
    assert back_s <= 30
    assert not missing, f"{len(missing)} answered decisions not in PostgreSQL"
    new = workers()
    assert new and victim not in new  # a new worker in the same container
    assert engine.docker("ps", "-q", "--filter", f"id={container}").split() == [container]
    assert engine.docker("inspect", "-f", "{{.RestartCount}}", container).strip() == restarts
