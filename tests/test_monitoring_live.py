"""Monitoring end to end with real parts: `bentoml serve`, Prometheus, Alertmanager, a local
Slack-compatible webhook and SMTP server.

Normal traffic flows first; then a stream whose amounts are multiplied by 5 (card-not-present
fraud) drifts the amount features and spikes the flagged share. The committed rules run with
every duration divided by ``FACTOR`` (see ``observability.compress``).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from training.core.schema import request_bodies
from training.demo.simulate import simulate

from .conftest import SMALL, free_port
from .observability import (
    GRAFANA_DASHBOARDS,
    Mailbox,
    Receiver,
    alertmanager,
    alertmanager_config,
    binary,
    dashboard_generator,
    dashboard_renderer,
    prometheus,
)
from .servers import AUTH, bento_server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.server]
FACTOR = 60  # 5m -> 5 s, 10m -> 10 s, 15m -> 15 s, 7d -> 2.8 h (all the data), 1d -> 24 min
BATCH = 20  # transactions per /predict request
PACE_S = 0.1  # between requests: ~200 transactions/s


class Traffic(threading.Thread):
    """Sends the stream in time order (amounts x5 once attacking), labels what it scored,
    and now and then a bad request."""

    def __init__(self, url: str, stream: list[dict], labels: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.url, self.stream, self.labels = url, stream, labels
        self.attacking = threading.Event()
        self.halt = threading.Event()
        self.status: dict[int, int] = {}
        self.scored = 0

    def next_batch(self) -> list[dict]:
        start = self.scored % len(self.stream)  # the stream is long enough not to wrap
        batch = self.stream[start : start + BATCH]
        if self.attacking.is_set():
            batch = [{**t, "tx_amount": round(t["tx_amount"] * 5, 2)} for t in batch]
        return batch

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=AUTH) as client:
            while not self.halt.is_set():
                r = client.post("/predict", json={"transactions": self.next_batch()})
                self.count(r.status_code)
                if r.status_code == 200:
                    self.scored += len(r.json())
                    labels = [
                        {
                            "transaction_id": p["transaction_id"],
                            "is_fraud": self.attacking.is_set()
                            or bool(self.labels[p["transaction_id"]]),
                        }
                        for p in r.json()
                    ]
                    self.count(client.post("/feedback", json={"labels": labels}).status_code)
                if self.scored % 400 == 0:  # a little bad input: must be a 4xx, counted
                    bad = client.post("/predict", json={"transactions": [{"tx_amount": "x"}]})
                    self.count(bad.status_code)
                    raw = client.post(
                        "/predict", content=b"a,b", headers={"content-type": "text/csv"}
                    )
                    self.count(raw.status_code)
                time.sleep(PACE_S)

    def count(self, status: int) -> None:
        self.status[status] = self.status.get(status, 0) + 1


@pytest.fixture(scope="module")
def streams(small_raw: pd.DataFrame) -> tuple[list[dict], dict[str, int]]:
    """The four weeks after the training data, same portfolio, with their true labels."""
    later = simulate(type(SMALL)(**{**SMALL.__dict__, "n_days": SMALL.n_days + 28}))
    weeks = later[later["TX_DATETIME"] > small_raw["TX_DATETIME"].max()].reset_index(drop=True)
    stream = request_bodies(weeks, id_prefix="live-")
    labels = {t["transaction_id"]: int(f) for t, f in zip(stream, weeks["TX_FRAUD"], strict=True)}
    return stream, labels


@pytest.fixture(scope="module")
def stack(champion, session_dir: Path, streams) -> Iterator[dict[str, Any]]:
    work = session_dir / "monitoring"
    work.mkdir(exist_ok=True)
    api_port, am_port, prom_port = free_port(), free_port(), free_port()
    env = {
        "FRAUD_PORT": str(api_port),
        "FRAUD_DRIFT_WINDOW": "1000",
        "FRAUD_DRIFT_MIN_TRANSACTIONS": "300",
        "BENTOML_DO_NOT_TRACK": "True",
        # the challenger panels need one: the champion shadows itself (a real challenger,
        # another version, runs in tests/test_challenger_service.py)
        "FRAUD_CHALLENGER_MODE": "shadow",
        "FRAUD_CHALLENGER_VERSION": champion["registration"].version,
    }
    with (
        Receiver() as webhook,
        Mailbox(free_port()) as mailbox,
        bento_server(api_port, env, work / "bento-serve.log") as api,
        alertmanager(work, am_port, alertmanager_config(webhook.url, mailbox.port)) as am,
    ):
        traffic = Traffic(api, *streams)
        traffic.start()
        try:
            with prometheus(
                work, prom_port, f"127.0.0.1:{api_port}", f"127.0.0.1:{am_port}", FACTOR
            ) as prom:
                yield {
                    "work": work,
                    "api": api,
                    "am": am,
                    "prom": prom,
                    "traffic": traffic,
                    "webhook": webhook,
                    "mailbox": mailbox,
                }
        finally:
            traffic.halt.set()
            traffic.join(10)


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, (expr, r.text)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def firing(prom: str) -> set[str]:
    return {s["metric"]["alertname"] for s in query(prom, 'ALERTS{alertstate="firing"}')}


def test_alerts_fire_end_to_end_and_every_panel_has_data(stack: dict[str, Any]) -> None:
    prom, traffic = stack["prom"], stack["traffic"]
    seen: set[str] = set()

    def watch() -> set[str]:
        now = firing(prom)
        seen.update(now)
        return now

    # --- normal traffic: the target is up, nothing about traffic, drift or fraud fires -------
    wait_for(lambda: query(prom, 'up{job="fraud-api"} == 1'), 30, "the fraud-api target to be up")
    # the baseline leaves out the last 30 min (30 s here): it exists once that much has passed
    wait_for(lambda: query(prom, "fraud:flagged:ratio_avg7d"), 60, "the flagged-share baseline")
    normal_until = time.monotonic() + 20
    while time.monotonic() < normal_until:
        unexpected = watch() & {"FraudNoTraffic", "FraudRateSpike", "FeatureDriftHigh"}
        drifting = query(prom, "fraud_feature_drift_psi > 0.1")
        assert not unexpected, (unexpected, traffic.status, drifting)
        time.sleep(1)
    normal_psi = {
        s["metric"]["feature"]: float(s["value"][1]) for s in query(prom, "fraud_feature_drift_psi")
    }
    assert normal_psi and max(normal_psi.values()) < 0.25, normal_psi

    # --- the attack: amounts x5 ---------------------------------------------------------------
    traffic.attacking.set()
    wanted = {"FeatureDriftHigh", "FraudRateSpike"}
    try:
        wait_for(lambda: wanted <= watch(), 120, f"{wanted} to fire")
    except AssertionError as exc:
        state = {
            e: [(r["metric"], r["value"][1]) for r in query(prom, e)]
            for e in (
                "ALERTS",
                "fraud:flagged:ratio_rate5m",
                "fraud:flagged:ratio_avg7d",
                "fraud:transactions:rate5m",
                "fraud_feature_drift_psi > 0.1",
            )
        }
        raise AssertionError(f"{exc}; seen {seen}; traffic {traffic.status}; {state}") from None
    webhook, mailbox = stack["webhook"], stack["mailbox"]
    wait_for(
        lambda: all(name in webhook.texts() for name in wanted), 30, "the webhook notifications"
    )
    # critical alerts are also mailed; the drift warning is not
    wait_for(lambda: any("FraudRateSpike" in s for s, _ in mailbox.messages), 30, "the email")
    assert not any("FeatureDriftHigh" in s for s, _ in mailbox.messages)
    # the drifted feature is named (features cross the threshold one by one: a later group
    # notification may carry it)
    wait_for(lambda: "TX_AMOUNT" in webhook.texts(), 60, "TX_AMOUNT in a notification")
    texts = webhook.texts()
    assert "FraudNoTraffic" not in seen and "FraudNoTraffic" not in texts
    rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    no_traffic = next(r for g in rules for r in g["rules"] if r["name"] == "FraudNoTraffic")
    assert no_traffic["health"] == "ok" and no_traffic["state"] == "inactive"

    # --- every PromQL of every dashboard panel returns data ----------------------------------
    generate = dashboard_generator()
    empty = []
    for path in GRAFANA_DASHBOARDS:
        for title, expr in generate.panel_queries(json.loads(path.read_text())):
            if not query(prom, expr):
                empty.append(f"{path.name}: {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # --- the same panels drawn from live data (the docs previews come from this) ------------
    render = dashboard_renderer()
    out = Path(stack["work"]) / "dashboards"
    for path in GRAFANA_DASHBOARDS:
        png = render.render(json.loads(path.read_text()), prom, 4, out / f"{path.stem}.png")
        assert png.stat().st_size > 20_000

    # --- the service saw no server error; the bad requests were 4xx and counted -------------
    assert not [s for s in traffic.status if s >= 500], traffic.status
    assert traffic.status.get(400) and traffic.status.get(415), traffic.status
    kinds = {s["metric"]["kind"] for s in query(prom, "fraud_errors_total")}
    assert {"validation", "unsupported_media"} <= kinds


def test_metrics_pass_promtool_lint(stack: dict[str, Any]) -> None:
    text = httpx.get(f"{stack['api']}/metrics", timeout=10).text
    out = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr  # all series
    fraud = "\n".join(line for line in text.splitlines() if line.startswith("fraud_"))
    for name in (
        "fraud_request_duration_seconds_bucket",
        "fraud_batch_size_bucket",
        "fraud_feature_drift_psi",
        "fraud_feature_state_entries",
        "fraud_labelled_decisions_total",
        "fraud_model_info",
        "fraud_model_trained_timestamp_seconds",
    ):
        assert name in fraud, name
    for label in ("transaction_id=", "customer_id=", "terminal_id="):  # no per-id labels
        assert label not in text
