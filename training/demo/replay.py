"""Drive a running service with the simulated days after a dataset, as live traffic comes:
``/predict`` in batches in time order and, with labels, each day's frauds through ``/feedback``
once the label delay has passed on the stream (as chargebacks arrive)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pandas as pd

from training.core import schema
from training.demo import simulate

RETRY_STATUSES = (429, 503)  # rate limit, overload or a dependency down: retry after a pause


class ReplayError(RuntimeError):
    """The service refused a request for good (not a retryable 429/503); the message says why."""


@dataclass
class ReplayReport:
    days: list[str]
    transactions: int = 0
    answered: int = 0
    flagged: int = 0
    degraded: int = 0
    labels_sent: int = 0
    verdicts_sent: int = 0  # the queue's same-day verdicts (fraud and genuine)
    retries: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    # what was answered live, a row a transaction: (id, probability, action)
    answers: list[tuple[str, float, str]] = field(default_factory=list)


def next_days(root: Path, days: int, skip: int = 0) -> pd.DataFrame:
    """The ``days`` simulated days after the dataset at ``root`` (its ``simulation.json``),
    ``skip`` days further on: the same customers and terminals, the days not yet seen."""
    cfg, _ = simulate.load_config(root)
    longer = replace(cfg, n_days=cfg.n_days + skip + days)
    return schema.normalize(simulate.simulate(longer, first_day=cfg.n_days + skip))


class _Client:
    """POSTs with the key, retrying 429/503 after their Retry-After (bounded)."""

    def __init__(self, url: str, key: str | None, report: ReplayReport, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.report = report

    def post(self, path: str, body: dict, attempts: int = 30) -> list | dict:
        for _ in range(attempts):
            try:
                answer = self.http.post(path, json=body)
            except httpx.TransportError as exc:  # a restart or a dropped connection
                self.report.retries[0] += 1
                time.sleep(1.0)
                last = str(exc)
                continue
            if answer.status_code == 200:
                return answer.json()
            if answer.status_code not in RETRY_STATUSES:
                raise ReplayError(f"{path}: {answer.status_code} {answer.text[:500]}")
            self.report.retries[answer.status_code] += 1
            last = answer.text[:200]
            time.sleep(min(float(answer.headers.get("retry-after") or 1), 5.0))
        raise ReplayError(f"{path}: no answer after {attempts} attempts ({last})")


def replay(
    url: str,
    frame: pd.DataFrame,
    key: str | None = None,
    batch: int = 100,
    labels: bool = False,
    label_delay_days: int = 7,
    progress: Callable[[str], None] | None = None,
    timeout: float = 30.0,
    queue_budget: int | None = None,
) -> ReplayReport:
    """Send ``frame`` (normalised transactions, time order) to the service at ``url``. With
    ``labels``, the frauds of each day go to ``/feedback`` when the stream enters the day
    ``label_delay_days`` later (days whose delay has not passed by the end keep theirs). With
    ``queue_budget``, analysts work the review queue the same day: at the day's end, its
    ``review`` answers with the highest scores, up to the budget, get their true label (fraud
    or genuine); their frauds are not sent again after the delay."""
    say = progress or (lambda _msg: None)
    day_of = frame[schema.TX_DATETIME].dt.normalize()
    days = sorted(day_of.unique())
    report = ReplayReport([f"{d:%Y-%m-%d}" for d in days])
    client = _Client(url, key, report, timeout)
    reviewed: set[str] = set()
    t0 = time.perf_counter()
    try:
        for i, day in enumerate(days):
            if labels and i >= label_delay_days:
                old = frame[day_of == days[i - label_delay_days]]
                old = old[~old[schema.TRANSACTION_ID].astype(str).isin(reviewed)]
                _send_labels(client, old, report)
            today = frame[day_of == day]
            bodies = schema.request_bodies(today)
            queue: list[tuple[float, str]] = []
            for start in range(0, len(bodies), batch):
                answers = client.post("/predict", {"transactions": bodies[start : start + batch]})
                report.transactions += len(bodies[start : start + batch])
                report.answered += len(answers)
                report.flagged += sum(1 for a in answers if a["is_fraud"])
                report.degraded += sum(1 for a in answers if a.get("degraded"))
                for a in answers:
                    action = a.get("action", "approve")
                    tx = str(a["transaction_id"])
                    report.answers.append((tx, a["fraud_probability"], action))
                    if action == "review":
                        queue.append((a["fraud_probability"], tx))
            if queue_budget:
                worked = [tx for _, tx in sorted(queue, reverse=True)[:queue_budget]]
                reviewed.update(worked)
                _send_verdicts(client, today, worked, report)
            say(f"{report.days[i]}: {report.answered:,} answered, {report.labels_sent:,} labels")
    finally:
        client.http.close()
        report.seconds = time.perf_counter() - t0
    return report


def _send_labels(client: _Client, day: pd.DataFrame, report: ReplayReport) -> None:
    frauds = day.loc[day[schema.TX_FRAUD] == 1, schema.TRANSACTION_ID].astype(str).tolist()
    for start in range(0, len(frauds), 1_000):
        chunk = [{"transaction_id": tx, "is_fraud": True} for tx in frauds[start : start + 1_000]]
        client.post("/feedback", {"labels": chunk})
        report.labels_sent += len(chunk)


def _send_verdicts(
    client: _Client, day: pd.DataFrame, worked: list[str], report: ReplayReport
) -> None:
    """The queue's verdicts: each worked transaction's true label, fraud or genuine."""
    truth = dict(zip(day[schema.TRANSACTION_ID].astype(str), day[schema.TX_FRAUD], strict=True))
    for start in range(0, len(worked), 1_000):
        chunk = [{"transaction_id": tx, "is_fraud": bool(truth[tx])}
                 for tx in worked[start : start + 1_000]]  # fmt: skip
        client.post("/feedback", {"labels": chunk})
        report.verdicts_sent += len(chunk)
