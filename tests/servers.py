"""Real servers for tests: an MLflow tracking server on PostgreSQL and `bentoml serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from . import services

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = services.PG  # the session's PostgreSQL (tests/services.py): a database per test module
# The test key (every scope, no limits): a fixed string, hashed into a key file per session.
KEY = "fm_7e575e11_the-test-suite-key-with-every-scope-and-no-limit"
SCORE_KEY = "fm_5c0e0001_a-key-with-scope-score-only"
LIMITED_KEY = "fm_11111111_a-key-with-scope-score-and-3-requests-a-second"
ANALYST_KEY = "fm_a1a1a1a1_an-analyst-key-with-scopes-label-and-read"  # named "alice"
AUTH = {"Authorization": f"Bearer {KEY}"}
API = httpx.Client(headers=AUTH, timeout=30)  # a client that sends the test key


def private_home(folder: Path) -> Path:
    """A BentoML home of its own for one server, sharing the session's model and Bento stores:
    BentoML keeps its Prometheus multiprocess files in the home and empties them when a server
    starts, so servers sharing a home would wipe each other's metrics."""
    shared = Path(os.environ["BENTOML_HOME"])
    folder.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        if not (folder / store).is_symlink():
            (folder / store).symlink_to(shared / store)
    return folder


def write_key_file(folder: Path, name: str = "api-keys.json") -> Path:
    """A key file holding the test key (every scope, no limits), a key with scope score only,
    one with score and 3 requests a second, and an analyst's (label and read, "alice")."""
    from datetime import UTC, datetime

    from training.core import api_keys

    def record(key: str, name: str, scopes: list[api_keys.Scope], rps: float | None = None):
        return api_keys.ApiKey(
            id=api_keys.key_id(key) or "",
            name=name,
            scopes=scopes,
            sha256=api_keys.digest(key),
            requests_per_s=rps,
            created_at=datetime.now(UTC),
        )

    path = folder / name
    keys = [
        record(KEY, "tests", list(api_keys.SCOPES)),
        record(SCORE_KEY, "scorer", ["score"]),
        record(LIMITED_KEY, "limited", ["score"], 3.0),
        record(ANALYST_KEY, "alice", ["label", "read"]),
    ]
    api_keys.save(path, api_keys.KeyFile(keys=keys))
    return path


def supervised(port: int, marker: str) -> list[Any]:
    """The live processes whose command line holds ``marker`` under the circus arbiter that
    holds ``port`` (a serving worker: ``_bentoml_impl.worker.service``; the shipper:
    ``serving.shipper``), as psutil processes."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "circusd":
            continue
        try:
            if port not in {c.laddr.port for c in proc.net_connections("tcp") if c.laddr}:
                continue
            children = proc.children()
        except psutil.Error:
            continue
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and marker in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone or a zombie: killed, not yet reaped
                continue
    return found


def wait_for(check, timeout: float, what: str, step: float = 1.0):  # type: ignore[no-untyped-def]
    """Poll ``check`` until it returns something true (returned); AssertionError after
    ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server and its children (own process group)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def psql(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE included) on the session's PostgreSQL."""
    services.run_sql(sql)


@contextmanager
def mlflow_server(workdir: Path, port: int) -> Iterator[str]:
    """`mlflow server` on a fresh PostgreSQL database with proxied artefacts; dropped after."""
    db = f"fraud_mlflow_test_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db}")
    log = workdir / "mlflow-server.log"
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"{PG}/{db}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(workdir / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        # no GenAI job runners (six extra processes this project does not use)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def serve_command(port: int) -> list[str]:
    """`bentoml serve service:FraudDetector` on 127.0.0.1:``port`` as `fraudops serve` runs it:
    through :mod:`serving.supervisor`, the decision shipper beside the workers."""
    return [sys.executable, "-m", "serving.supervisor", "service:FraudDetector",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


@contextmanager
def bento_server(port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """`bentoml serve service:FraudDetector` through :mod:`serving.supervisor` (respawning
    workers, the decision shipper beside them) in a subprocess; unless ``env`` says otherwise,
    with API keys on and the test key (:data:`AUTH`) valid."""
    if "FRAUD_API_KEYS_FILE" not in env and env.get("FRAUD_AUTH", "keys") == "keys":
        env = {**env, "FRAUD_API_KEYS_FILE": str(write_key_file(log.parent, f"{log.stem}.keys"))}
    env = {
        "BENTOML_HOME": str(private_home(log.parent / f"{log.stem}.home")),
        # a decision journal and store of its own (not the project's .fraud/)
        "FRAUD_JOURNAL_DIR": str(log.parent / f"{log.stem}.journal"),
        "FRAUD_DECISION_DB_URL": f"sqlite:///{log.parent / f'{log.stem}.decisions.db'}",
        **env,
    }
    proc = subprocess.Popen(
        serve_command(port),
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def assert_times_outside_the_clock_are_refused(url: str, customer: str) -> None:
    """9999-12-31, 1970-01-01 and a 2-day jump from the service's clock get a 400 naming
    ``tx_datetime`` and leave the customer's history as it was; the stream then goes on."""
    from datetime import datetime, timedelta

    at = API.get(f"{url}/health").json()["clock"]["now"].replace("Z", "+00:00")

    def body(tx_id: str, when: str) -> dict:
        return {"transactions": [{"transaction_id": tx_id, "tx_datetime": when,
                "customer_id": customer, "terminal_id": "clock-T", "tx_amount": 20.0}]}  # fmt: skip

    first = API.post(f"{url}/predict", json=body("clock-0", at))
    assert first.status_code == 200, first.text
    before = API.get(f"{url}/health").json()["feature_state"]
    jump = (datetime.fromisoformat(at) + timedelta(days=2)).isoformat()
    for when in ("9999-12-31T00:00:00Z", "1970-01-01T00:00:00Z", jump):
        r = API.post(f"{url}/predict", json=body(f"clock-{when}", when))
        assert r.status_code == 400, (when, r.text)
        (detail,) = r.json()["detail"]
        assert detail["loc"][-1] == "tx_datetime" and "service clock" in detail["msg"], detail
        fed = API.post(f"{url}/feedback", json={"transactions": [
            {**body(f"fb-{when}", when)["transactions"][0], "is_fraud": True}]})  # fmt: skip
        assert fed.status_code == 400 and fed.json()["detail"][0]["loc"][-1] == "tx_datetime"
    after = API.get(f"{url}/health").json()["feature_state"]
    assert after == before  # nothing recorded, nothing expired
    # The same customer a minute later: scored with the history the bad times never touched.
    later = (datetime.fromisoformat(at) + timedelta(minutes=1)).isoformat()
    r = API.post(f"{url}/predict", json=body("clock-1", later))
    assert r.status_code == 200, r.text
