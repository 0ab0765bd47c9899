"""Load test: a realistic stream of simulated transactions against the fraud API.

Mix: 80 % single-transaction requests, 15 % 100-transaction batches, 5 % bad requests that
must get a 4xx (anything else counts as a failure). The stream continues the demo dataset in
time (LOAD_START_DATE, default the day after it ends), with the same customers and terminals.

    locust -f tests/load/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8080
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from pathlib import Path

from locust import FastHttpUser, between, events, task

from training.core.schema import request_bodies
from training.demo.simulate import SimulationConfig, simulate

STREAM: list[dict] = []
_cursor = itertools.count()
_lock = threading.Lock()


@events.init.add_listener
def build_stream(environment, **_kw) -> None:
    """Simulate the next days of the portfolio once per load-generator process."""
    cfg = SimulationConfig(
        n_customers=int(os.environ.get("LOAD_CUSTOMERS", "2500")),
        n_terminals=int(os.environ.get("LOAD_TERMINALS", "5000")),
        n_days=int(os.environ.get("LOAD_DAYS", "2")),
        start_date=os.environ.get("LOAD_START_DATE", "2018-07-10"),
        seed=int(os.environ.get("LOAD_SEED", "4242")),
    )
    df = simulate(cfg)
    STREAM.extend(request_bodies(df, id_prefix=f"load-{os.getpid()}-"))


def next_transactions(n: int) -> list[dict]:
    """The next ``n`` transactions of the stream (shared by all users, in time order)."""
    with _lock:
        idx = [next(_cursor) % len(STREAM) for _ in range(n)]
    return [STREAM[i] for i in idx]


BAD_BODIES = [
    {"transactions": []},
    {
        "transactions": [
            {
                "transaction_id": "x",
                "tx_datetime": "not-a-date",
                "customer_id": 1,
                "terminal_id": 1,
                "tx_amount": 1.0,
            }
        ]
    },
    {
        "transactions": [
            {
                "transaction_id": "x",
                "tx_datetime": "2018-07-10T10:00:00",
                "customer_id": 1,
                "terminal_id": 1,
                "tx_amount": -4,
            }
        ]
    },
    {"transactions": [{"transaction_id": "x", "customer_id": 1, "terminal_id": 1}]},
    {"wrong": True},
]


def api_key() -> str:
    """FRAUD_KEY, else the local key `make run` created (.fraud/local.key)."""
    key = os.environ.get("FRAUD_KEY")
    if key:
        return key
    local = Path(os.environ.get("FRAUD_API_KEYS_FILE", ".fraud/api-keys.json"))
    path = local.with_name("local.key")
    return path.read_text().strip() if path.exists() else ""


HEADERS = {"Authorization": f"Bearer {api_key()}"}


class FraudApiUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def _predict(self, txs: list[dict], name: str) -> None:
        with self.client.post(
            "/predict",
            json={"transactions": txs},
            name=name,
            headers=HEADERS,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            body = resp.json()
            ok = len(body) == len(txs) and all(
                r["transaction_id"] == t["transaction_id"]
                and 0.0 <= r["fraud_probability"] <= 1.0
                and r["model_version"]
                for r, t in zip(body, txs, strict=True)
            )
            if not ok:
                resp.failure("wrong results")

    @task(80)
    def single(self) -> None:
        self._predict(next_transactions(1), "/predict [1 tx]")

    @task(15)
    def batch(self) -> None:
        self._predict(next_transactions(100), "/predict [100 tx]")

    @task(5)
    def bad(self) -> None:
        body = random.choice(BAD_BODIES)
        with self.client.post(
            "/predict",
            json=body,
            name="/predict [bad input]",
            headers=HEADERS,
            catch_response=True,
        ) as resp:
            if 400 <= resp.status_code < 500:
                resp.success()
            else:
                resp.failure(f"bad input got {resp.status_code}")
