"""Live challengers through `bentoml serve` under load, with labels, Prometheus scraping: a
shadow changes no answer and is logged beside it; a canary worse on purpose (trained on
shuffled labels) answers its customers, then rolls itself back; promoting is a hot swap."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from serving.challenger import in_canary
from training import data, registry, train
from training.core import decision_store
from training.core.config import Settings
from training.core.schema import request_bodies
from training.demo.simulate import simulate

from .conftest import SMALL, free_port
from .observability import prometheus
from .servers import AUTH, BIN, PROJECT, bento_server

pytestmark = [pytest.mark.slow, pytest.mark.server]
CLIENTS = 4


@pytest.fixture(scope="module")
def live_env(champion, small_raw, small_feats, tmp_path_factory) -> dict[str, str]:
    """A registry and a Bento home of their own: v1 the session champion, v2 a challenger
    worse on purpose (shuffled labels), both imported by `fraudops import-bento`."""
    root = tmp_path_factory.mktemp("challengers")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db",
        "FRAUD_MLFLOW_ARTIFACT_ROOT": str(root / "mlruns" / "artifacts"),
        "BENTOML_HOME": str(root / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    settings = Settings(
        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"],
        mlflow_artifact_root=Path(env["FRAUD_MLFLOW_ARTIFACT_ROOT"]),
    )
    client = registry.configure(settings)
    try:
        v1 = registry.log_training(champion["result"], small_raw, small_feats, settings, "small")
        client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, v1.version)
        shuffled = small_raw.assign(
            TX_FRAUD=np.random.default_rng(5).permutation(small_raw["TX_FRAUD"].to_numpy())
        )
        layout = data.handbook_layout(shuffled, n_folds=1)
        bad = train.train(shuffled, small_feats, layout, grid={"n_estimators": [20]})
        v2 = registry.log_training(bad, shuffled, small_feats, settings, "shuffled labels")
        client.set_registered_model_alias(
            settings.registered_model, registry.CHALLENGER, v2.version
        )
    finally:
        registry.configure(Settings())  # the session's registry again
    for alias in ("champion", "challenger"):
        out = subprocess.run(
            [str(BIN / "fraudops"), "import-bento", "--alias", alias],
            cwd=PROJECT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    return {**env, "v1": v1.version, "v2": v2.version}


@pytest.fixture(scope="module")
def later(small_raw: pd.DataFrame) -> pd.DataFrame:
    """The two weeks after the training data, same portfolio, with their true labels."""
    sim = simulate(type(SMALL)(**{**SMALL.__dict__, "n_days": SMALL.n_days + 14}))
    return sim[sim["TX_DATETIME"] > small_raw["TX_DATETIME"].max()].reset_index(drop=True)


def serve(live_env: dict[str, str], tmp: Path, **settings: str) -> Any:
    env = {k: v for k, v in live_env.items() if not k.startswith("v")}
    env.update({"FRAUD_DECISION_DB_URL": f"sqlite:///{tmp / 'decisions.db'}", **settings})
    return bento_server(free_port(), env, tmp / "serve.log")


class Load(threading.Thread):
    """A client sending the stream in batches of 1-10, labelling every answer at once."""

    def __init__(self, url: str, bodies: list[dict], truth: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.url, self.bodies, self.truth = url, bodies, truth
        self.answers: list[dict] = []
        self.statuses: dict[int, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(len(self.bodies))
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as http:
            i = 0
            while i < len(self.bodies) and not self.halt.is_set():
                n = int(rng.integers(1, 11))
                r = http.post("/predict", json={"transactions": self.bodies[i : i + n]})
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    got = r.json()
                    self.answers += got
                    labels = [
                        {
                            "transaction_id": a["transaction_id"],
                            "is_fraud": bool(self.truth[a["transaction_id"]]),
                        }
                        for a in got
                    ]
                    f = http.post("/feedback", json={"labels": labels})
                    self.statuses[f.status_code] = self.statuses.get(f.status_code, 0) + 1
                i += n


def drive(url: str, later: pd.DataFrame, prefix: str, until: Any = None) -> list[Load]:
    """CLIENTS clients, each a share of the customers (their transactions stay in order)."""
    bodies = request_bodies(later, id_prefix=prefix)
    truth = {b["transaction_id"]: int(f) for b, f in zip(bodies, later["TX_FRAUD"], strict=True)}
    shares: list[list[dict]] = [[] for _ in range(CLIENTS)]
    for b in bodies:
        shares[hash(str(b["customer_id"])) % CLIENTS].append(b)
    loads = [Load(url, share, truth) for share in shares]
    for load in loads:
        load.start()
    deadline = time.monotonic() + 300
    while any(t.is_alive() for t in loads) and time.monotonic() < deadline:
        if until is not None and until():
            break
        time.sleep(0.5)
    for load in loads:
        load.halt.set()
        load.join(30)
    return loads


def prom_query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_a_shadow_challenger_changes_no_answer_and_is_measured(live_env, later, work: Path) -> None:
    v1, v2 = live_env["v1"], live_env["v2"]
    with serve(live_env, work, FRAUD_CHALLENGER_MODE="shadow") as url:
        port = int(url.rsplit(":", 1)[1])
        with prometheus(work, free_port(), f"127.0.0.1:{port}", "127.0.0.1:9", 1) as prom:
            loads = drive(url, later.head(6_000), "shadow-")
            health = httpx.get(f"{url}/health", timeout=10).json()
            # Prometheus has the challenger's series: agreement, live labels per model
            total = "sum(fraud_challenger_agreement_total)"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # scraped every second: the last scrape
                got = prom_query(prom, total)
                if got and float(got[0]["value"][1]) >= 6_000:
                    break
                time.sleep(1)
            roles = {s["metric"]["role"] for s in prom_query(prom, "fraud_challenger_labels_total")}
            agreement = prom_query(prom, total)
            info = prom_query(prom, "fraud_challenger_info")
    answers = [a for load in loads for a in load.answers]
    statuses = {s for load in loads for s in load.statuses}
    assert statuses == {200}, [load.statuses for load in loads]
    assert len(answers) == 6_000
    assert {(a["model_version"], a["arm"]) for a in answers} == {(v1, "champion")}
    shadow = health["challenger"]
    assert shadow["mode"] == "shadow" and shadow["version"] == v2 and shadow["active"]
    assert sum(shadow["agreement"].values()) == 6_000
    live = shadow["live"]
    assert live["champion"]["precision"] > live["challenger"]["precision"]  # worse on purpose
    assert roles == {"champion", "challenger"}
    assert float(agreement[0]["value"][1]) == 6_000
    assert {(s["metric"]["version"], s["metric"]["mode"], s["value"][1]) for s in info} == {
        (v2, "shadow", "1")
    }
    # the decision log keeps the shadow's score beside every answer
    engine = decision_store.engine_for(f"sqlite:///{work / 'decisions.db'}")
    try:
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        decision_store.decisions.c.model_version,
                        decision_store.decisions.c.arm,
                        decision_store.decisions.c.shadow_version,
                        decision_store.decisions.c.shadow_probability,
                    )
                ).all()
            if len(rows) >= 6_000 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    assert len(rows) == 6_000
    assert {(r[0], r[1], r[2]) for r in rows} == {(v1, "champion", v2)}
    assert all(0.0 <= r[3] <= 1.0 for r in rows)


def test_a_worse_canary_answers_its_customers_then_rolls_back(live_env, later, work) -> None:
    v1, v2 = live_env["v1"], live_env["v2"]
    settings = {"FRAUD_CHALLENGER_MODE": "canary", "FRAUD_CANARY_SHARE": "0.5",
                "FRAUD_CANARY_MIN_LABELS": "20"}  # fmt: skip
    with (
        serve(live_env, work, **settings) as url,
        prometheus(work, free_port(), url.removeprefix("http://"), "127.0.0.1:9", 1) as prom,
    ):

        def rolled_back() -> bool:
            return bool(httpx.get(f"{url}/health", timeout=10).json()["challenger"]["rolled_back"])

        loads = drive(url, later, "canary-", until=rolled_back)
        health = httpx.get(f"{url}/health", timeout=10).json()["challenger"]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        # Prometheus has the arms and the roll-back (scraped every second)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not prom_query(
            prom, "fraud_canary_rollbacks_total > 0"
        ):
            time.sleep(1)
        arms = {s["metric"]["arm"] for s in prom_query(prom, "fraud_arm_transactions_total > 0")}
        labelled = {s["metric"]["arm"] for s in prom_query(prom, "fraud_arm_labels_total > 0")}
        assert prom_query(prom, "fraud_canary_rollbacks_total > 0"), "no roll-back in Prometheus"
        assert arms == labelled == {"champion", "canary"}
        # after the roll-back the champion answers everyone
        after = request_bodies(later.head(200), id_prefix="after-")  # inside the clock
        r = httpx.post(f"{url}/predict", json={"transactions": after}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        assert {(a["model_version"], a["arm"]) for a in r.json()} == {(v1, "champion")}

        # promoting a canary is a hot swap to its version: the challenger ends with it
        r = httpx.post(f"{url}/admin/challenger", json={"mode": "canary", "version": v2,
                       "share": 0.2}, headers=AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.json()["version"] == v2, r.text
        r = httpx.post(f"{url}/admin/reload", json={"version": v2}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        promoted = httpx.get(f"{url}/health", timeout=10).json()
        assert promoted["model"]["version"] == v2 and promoted["challenger"]["mode"] == "off"
        missing = httpx.post(f"{url}/admin/challenger", json={"mode": "shadow", "version": "99"},
                             headers=AUTH, timeout=30)  # fmt: skip
        assert missing.status_code == 404 and "99" in missing.text

    answers = [a for load in loads for a in load.answers]
    assert {s for load in loads for s in load.statuses} == {200}
    canary = [a for a in answers if a["arm"] == "canary"]
    assert canary and all(a["model_version"] == v2 for a in canary)
    assert all(a["model_version"] == v1 for a in answers if a["arm"] == "champion")
    customers = {b["transaction_id"]: str(b["customer_id"])
                 for b in request_bodies(later, id_prefix="canary-")}  # fmt: skip
    for a in answers:  # every answer from the arm its customer hashes to, until the roll-back
        if a["arm"] == "canary":
            assert in_canary(customers[a["transaction_id"]], 0.5)
    assert health["rolled_back"] and "live precision" in health["rolled_back"]
    figures = health["arms"]
    # (labels of answers in flight at the roll-back still count after it: no margin here)
    assert figures["canary"]["live"]["precision"] < figures["champion"]["live"]["precision"]
    assert "fraud_canary_rollbacks_total 1.0" in metrics
    assert 'fraud_challenger_info{mode="canary",share="0.5",version="' + v2 + '"} 0.0' in metrics
