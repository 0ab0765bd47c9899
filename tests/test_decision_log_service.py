"""The decision log through `bentoml serve`: every answered decision and every label reaches
the store (PostgreSQL here; SQLite on the shared session server) with its features, model,
key and label history."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from training.core import decision_store as ds

from .conftest import free_port
from .servers import AUTH, PG, SCORE_KEY, bento_server, psql, supervised, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.server]

T0 = datetime(2018, 6, 15, 11, 0, 0)  # the day after the small dataset ends (stream clock)


def txs(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": f"{prefix}-{i}",
            "tx_datetime": (T0 + timedelta(minutes=i)).isoformat(),
            "customer_id": 100 + i % 7,
            "terminal_id": str(300 + i % 5),
            "tx_amount": 12.5 + 10 * i,
            "tx_channel": "card_not_present" if i % 3 else "card_present",
        }
        for i in range(n)
    ]


def wait_for_rows(url: str, decisions: int, labels: int, timeout: float = 20) -> None:
    engine = ds.engine_for(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with engine.connect() as conn:
                    got = ds.count(conn, ds.decisions), ds.count(conn, ds.label_events)
            except Exception:  # the tables are made by the service's first delivery
                got = (-1, -1)
            if got == (decisions, labels):
                return
            assert time.monotonic() < deadline, f"store has {got}, want {(decisions, labels)}"
            time.sleep(0.2)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg_server(champion, session_dir: Path) -> Iterator[tuple[str, str]]:
    db = f"fraud_decisions_srv_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db}")
    store = f"{PG}/{db}"
    port = free_port()
    env = {"BENTOML_DO_NOT_TRACK": "True", "FRAUD_DECISION_DB_URL": store}
    try:
        with bento_server(port, env, session_dir / "bento-serve-pg-log.log") as url:
            yield url, store
    finally:
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def check_the_log(url: str, store: str, prefix: str) -> None:
    client = httpx.Client(timeout=30)
    first = client.post(f"{url}/predict", json={"transactions": txs(prefix, 12)}, headers=AUTH)
    scorer = {"Authorization": f"Bearer {SCORE_KEY}"}
    more = txs(f"{prefix}b", 3)
    second = client.post(f"{url}/predict", json={"transactions": more}, headers=scorer)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    answers = {a["transaction_id"]: a for a in first.json() + second.json()}
    labels = [
        {"transaction_id": f"{prefix}-0", "is_fraud": True},
        {"transaction_id": f"{prefix}-1", "is_fraud": False},
    ]
    fb = client.post(f"{url}/feedback", json={"labels": labels}, headers=AUTH)
    fix = client.post(  # a corrected label: the history keeps both
        f"{url}/feedback",
        json={"labels": [{"transaction_id": f"{prefix}-0", "is_fraud": False}]},
        headers=AUTH,
    )
    record = {**txs(f"{prefix}c", 1)[0], "is_fraud": True}  # seen by another channel only
    sent = client.post(f"{url}/feedback", json={"transactions": [record]}, headers=AUTH)
    assert fb.status_code == 200 and fix.status_code == 200, (fb.text, fix.text)
    assert sent.status_code == 200, sent.text
    wait_for_rows(store, 16, 4)

    engine = ds.engine_for(store)
    with engine.connect() as conn:
        row = ds.decision(conn, f"{prefix}-4")
        other = ds.decision(conn, f"{prefix}b-2")
        history = ds.label_history(conn, f"{prefix}-0")
        ingested = ds.decision(conn, f"{prefix}c-0")
        ingested_labels = ds.label_history(conn, f"{prefix}c-0")
    engine.dispose()
    assert ingested is not None and ingested["kind"] == ds.FEEDBACK
    assert ingested["probability"] is None and ingested["amount_cents"] == 1250
    assert [h["is_fraud"] for h in ingested_labels] == [True]
    assert row is not None and other is not None
    answer = answers[f"{prefix}-4"]
    assert row["probability"] == pytest.approx(answer["fraud_probability"], abs=1e-12)
    assert (row["action"], row["rule"]) == (answer["action"], answer["rule"])  # the rules' answer
    assert row["rule_set_version"]
    assert row["is_fraud"] == answer["is_fraud"]
    assert row["model_version"] == answer["model_version"]
    assert row["customer_id"] == "104" and row["amount_cents"] == 5250
    assert row["api_key"] == "tests" and other["api_key"] == "scorer"  # each request's own key
    assert row["features"] and "TX_AMOUNT" in row["features"]
    assert row["features"]["TX_AMOUNT"] == pytest.approx(52.5)
    assert [(h["is_fraud"], h["api_key"]) for h in history] == [(True, "tests"), (False, "tests")]
    health = client.get(f"{url}/health").json()["decision_log"]
    assert health["ok"] and health["backlog_bytes"] == 0


@pytest.mark.postgres
def test_decisions_and_labels_reach_postgresql(pg_server: tuple[str, str]) -> None:
    check_the_log(*pg_server, prefix="pg")


@pytest.mark.postgres
def test_a_stopped_shipper_shows_as_backlog_and_a_killed_one_comes_back(
    pg_server: tuple[str, str],
) -> None:
    """The workers only journal: with the shipper stopped, answers go on, the backlog and the
    delivery age grow on /health and /metrics (what FraudDecisionLogBehind reads); the shipper
    killed, the supervisor starts another, which delivers it all."""
    url, store = pg_server
    port = int(url.rsplit(":", 1)[1])
    client = httpx.Client(timeout=30, headers=AUTH)
    engine = ds.engine_for(store)
    with engine.connect() as conn:
        before = ds.count(conn, ds.decisions), ds.count(conn, ds.label_events)
    engine.dispose()
    (shipper,) = supervised(port, "serving.shipper")
    shipper.suspend()  # SIGSTOP
    try:
        for i in range(4):
            r = client.post(f"{url}/predict", json={"transactions": txs(f"stopped{i}", 3)})
            assert r.status_code == 200, r.text
            time.sleep(1.5)  # past the workers' upkeep, which reads the journals' disk
        health = client.get(f"{url}/health").json()["decision_log"]
        metrics = client.get(f"{url}/metrics").text
        assert health["backlog_bytes"] > 0 and health["last_delivered_s_ago"] >= 4, health
        assert metric(metrics, "fraud_decision_log_backlog_bytes") > 0
        assert metric(metrics, "fraud_decision_log_last_ship_age_seconds") >= 2
    finally:
        shipper.kill()  # SIGKILL works on a stopped process
    wait_for(lambda: supervised(port, "serving.shipper"), 30, "a new shipper", 0.2)
    wait_for_rows(store, before[0] + 12, before[1])
    assert supervised(port, "serving.shipper")[0].pid != shipper.pid
    client.post(f"{url}/predict", json={"transactions": txs("after", 1)})  # the upkeep again
    wait_for(lambda: client.get(f"{url}/health").json()["decision_log"]["backlog_bytes"] == 0,
             10, "the backlog back to 0", 0.2)  # fmt: skip


def metric(text: str, name: str) -> float:
    """A gauge's value in a /metrics text (summed over its lines)."""
    lines = [line for line in text.splitlines() if line.startswith(name)]
    assert lines, f"{name} not in /metrics"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_decisions_and_labels_reach_the_embedded_sqlite(
    service_url: str, session_dir: Path
) -> None:
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"  # bento_server's default
    client = httpx.Client(timeout=30, headers=AUTH)
    ids = [t["transaction_id"] for t in txs("sq", 5)]
    assert client.post(f"{service_url}/predict", json={"transactions": txs("sq", 5)}).is_success
    deadline = time.monotonic() + 20
    while True:
        engine = ds.engine_for(store)
        try:
            with engine.connect() as conn:
                found = ds.count(conn, ds.decisions, ids)
        except Exception:
            found = 0
        finally:
            engine.dispose()
        if found == 5:
            break
        assert time.monotonic() < deadline, f"{found} of 5 decisions in the SQLite store"
        time.sleep(0.2)


def test_a_restarted_server_answers_as_its_twin_that_never_stopped(
    champion, session_dir: Path
) -> None:
    """Two `bentoml serve`, each with its own store, get the same stream and labels; one is
    stopped and started again (a recreated container: same journal volume and store). The
    same new transactions then get the same scores from both."""
    stream = txs("tw", 40)
    labels = [{"transaction_id": f"tw-{i}", "is_fraud": i % 4 == 0} for i in range(12)]
    probe = [
        {**t, "transaction_id": f"probe-{i}", "tx_datetime": (T0 + timedelta(hours=3)).isoformat()}
        for i, t in enumerate(txs("p", 7))
    ]
    env = {"BENTOML_DO_NOT_TRACK": "True"}

    def feed(url: str) -> None:
        client = httpx.Client(timeout=30, headers=AUTH)
        for start in range(0, len(stream), 10):
            r = client.post(f"{url}/predict", json={"transactions": stream[start : start + 10]})
            assert r.status_code == 200, r.text
        assert client.post(f"{url}/feedback", json={"labels": labels}).status_code == 200

    def score(url: str) -> list[float]:
        r = httpx.post(f"{url}/predict", json={"transactions": probe}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        return [a["fraud_probability"] for a in r.json()]

    with bento_server(free_port(), env, session_dir / "twin.log") as twin:
        feed(twin)
        with bento_server(free_port(), env, session_dir / "restarted.log") as first:
            feed(first)
        with bento_server(free_port(), env, session_dir / "restarted.log") as again:
            health = httpx.get(f"{again}/health", timeout=30).json()["decision_log"]
            assert health["replayed"] == len(stream) and health["replay_error"] is None
            assert score(again) == pytest.approx(score(twin), abs=1e-12)
