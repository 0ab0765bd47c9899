"""Prometheus metrics of the fraud service (prefix ``fraud_``, base units, no per-id labels):
their definitions (shared with the dashboards' generator and the tests), the hot path's batched
histogram writes and the request middleware that sees every API answer, 415s included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from serving.http_guard import ASGIApp, Scope

API_ROUTES = ("/predict", "/explain", "/feedback", "/test", "/health")

REQUEST_SECONDS = Histogram(
    "fraud_request_duration_seconds",
    "API request latency as the server sees it, by endpoint",
    ["endpoint"],
    buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5],
)
ERRORS = Counter(
    "fraud_errors_total",
    "Failed API requests by kind (validation, unauthenticated, forbidden, not_found, too_large, "
    "unsupported_media, rate_limited, client, overloaded, internal)",
    ["endpoint", "kind"],
)
AUTH_FAILURES = Counter(
    "fraud_auth_failures_total",
    "Requests refused by the API-key check, by reason (missing, invalid, scope)",
    ["reason"],
)
RATE_LIMITED = Counter(
    "fraud_rate_limited_total", "Requests answered 429 by a key's rate limit, by key", ["key"]
)
RATE_LIMIT_FALLBACK = Counter(
    "fraud_rate_limit_fallback_total",
    "Shared (Redis) rate-limit checks that failed over to this worker's own buckets",
)
API_KEYS = Gauge("fraud_api_keys", "Active API keys in the key file", multiprocess_mode="livemax")
STATE_UP = Gauge(
    "fraud_state_store_up",
    "1 while the online feature state store is usable, 0 while unreachable or re-warming",
    multiprocess_mode="livemin",
)
STATE_REWARMING = Gauge(
    "fraud_state_rewarming",
    "1 while the state store is being warmed again after it came back empty",
    multiprocess_mode="livemax",
)
STATE_REWARM_SECONDS = Gauge(
    "fraud_state_last_rewarm_seconds",
    "How long the last re-warm of an emptied state store took (its history, then the log)",
    multiprocess_mode="livemax",
)
STATE_REWARMS = Counter(
    "fraud_state_rewarms_total", "Times the state store came back empty and was warmed again"
)


def rewarmed(seconds: float) -> None:
    """A re-warm of the emptied state store ended (called from the re-warm's thread)."""
    STATE_REWARM_SECONDS.set(seconds)
    STATE_REWARMING.set(0)
    STATE_REWARMS.inc()


DEGRADED = Counter(
    "fraud_degraded_transactions_total",
    "Transactions met while the state store was unavailable, by outcome (rejected: 503; "
    "fallback: scored without history, flagged degraded)",
    ["outcome"],
)
REPLAYED = Counter(
    "fraud_resent_transactions_total",
    "Transactions sent again after they were scored: given their first answer, not counted again",
)
LOG_BACKLOG = Gauge(
    "fraud_decision_log_backlog_bytes",
    "Decision-journal bytes not yet in the decision store (grows while it is unreachable)",
    multiprocess_mode="livesum",
)
LOG_SHIP_AGE = Gauge(
    "fraud_decision_log_last_ship_age_seconds",
    "Seconds since the decision journal was last delivered to the store",
    multiprocess_mode="livemax",
)
LOG_STORED = Counter(
    "fraud_decision_log_stored_total",
    "Rows the shipper stored, by kind (decision, label)",
    ["kind"],
)
LOG_FAILURES = Counter(
    "fraud_decision_log_failures_total",
    "Answers refused (503) because the decision journal could not be made durable",
)
PREDICTIONS = Counter("fraud_predictions_total", "Scored transactions by decision", ["decision"])
RULE_HITS = Counter(
    "fraud_rule_decisions_total",
    "Scored transactions by the rule that decided them (none: no rule matched) and its action",
    ["rule", "action"],
)
# Fraud-probability buckets: the served scores and each model's under a challenger
SCORE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
SCORES = Histogram(
    "fraud_score",
    "Fraud probability of scored transactions",
    buckets=SCORE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "fraud_batch_size",
    "Transactions per adaptive batch (several requests merged by BentoML)",
    buckets=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
)
SCORING_SECONDS = Histogram(
    "fraud_scoring_batch_seconds",
    "Features + model time per adaptive batch",
    buckets=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0],
)
FEEDBACK = Counter("fraud_feedback_total", "Feedback labels by outcome", ["outcome"])
LABELLED = Counter(
    "fraud_labelled_decisions_total",
    "Scored transactions whose label arrived, by confusion cell (tp, fp, fn, tn)",
    ["outcome"],
)
MODEL_INFO = Gauge(
    "fraud_model_info",
    "Served model (value 1); version, alias and training time as labels",
    ["name", "version", "alias", "trained_at"],
    multiprocess_mode="livemax",
)
MODEL_TRAINED = Gauge(
    "fraud_model_trained_timestamp_seconds",
    "When the served model version was registered",
    multiprocess_mode="livemax",
)
MODEL_THRESHOLD = Gauge(
    "fraud_model_threshold", "Decision threshold of the served model", multiprocess_mode="livemax"
)
MODEL_HOLDOUT = Gauge(
    "fraud_model_holdout_metric",
    "Hold-out metric of the served model at training time (auc, ap, cp100, precision, recall)",
    ["metric"],
    multiprocess_mode="livemax",
)
STATE_SIZE = Gauge(
    "fraud_feature_state_entries",
    "Online feature state size by kind (customers, terminals, transactions, customer_events)",
    ["kind"],
    multiprocess_mode="livemostrecent",
)
DRIFT_PSI = Gauge(
    "fraud_feature_drift_psi",
    "PSI of recent scored traffic against the model's training reference, per feature",
    ["feature"],
    multiprocess_mode="livemostrecent",
)
MODEL_SWAPS = Counter(
    "fraud_model_swaps_total", "Model hot swaps by outcome (ok, failed)", ["outcome"]
)
DRIFT_WINDOW = Gauge(
    "fraud_drift_window_transactions",
    "Scored transactions in the drift window",
    multiprocess_mode="livemostrecent",
)


def _info_labels(metadata: Mapping[str, Any], version: str) -> tuple[str, str, str, str]:
    trained_ms = int(metadata.get("trained_at") or 0)
    trained_iso = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(trained_ms / 1000)) if trained_ms else ""
    )
    return (
        str(metadata.get("mlflow_model_name")),
        version,
        str(metadata.get("mlflow_alias")),
        trained_iso,
    )


# Live challengers (serving/challenger.py): shadow and canary.
CHALLENGER_INFO = Gauge(
    "fraud_challenger_info",
    "The live challenger (1 while it takes part, 0 once off or rolled back); version, mode "
    "(shadow or canary) and share as labels",
    ["version", "mode", "share"],
    multiprocess_mode="livemax",
)
MODEL_SCORES = Histogram(
    "fraud_model_score",
    "Scores of the transactions both models scored (shadow, canary share), by model role",
    ["role"],
    buckets=SCORE_BUCKETS,
)
AGREEMENT = Counter(
    "fraud_challenger_agreement_total",
    "Decisions of champion and challenger on the same transactions (both_fraud, "
    "both_genuine, champion_only, challenger_only)",
    ["outcome"],
)
MODEL_LABELS = Counter(
    "fraud_challenger_labels_total",
    "Labelled transactions both models scored, by model role and outcome of its decision "
    "(tp, fp, fn, tn): live precision and recall per model",
    ["role", "outcome"],
)
ARM_TRANSACTIONS = Counter(
    "fraud_arm_transactions_total",
    "Transactions answered while a challenger runs, by arm (champion; canary: answered by "
    "the challenger)",
    ["arm"],
)
ARM_LABELS = Counter(
    "fraud_arm_labels_total",
    "Labelled transactions of a canary run, by the arm that answered and the outcome (tp, fp, "
    "fn, tn)",
    ["arm", "outcome"],
)
CHALLENGER_SECONDS = Histogram(
    "fraud_challenger_model_seconds",
    "The challenger's model time per batch (its share of the batch)",
    buckets=[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1],
)
CHALLENGER_ERRORS = Counter(
    "fraud_challenger_errors_total",
    "Transactions the challenger failed to score (the champion's answer stood)",
)
CANARY_ROLLBACKS = Counter(
    "fraud_canary_rollbacks_total", "Canaries rolled back automatically (reason in the log)"
)


def publish_challenger(version: str, mode: str, share: float, active: bool) -> None:
    CHALLENGER_INFO.labels(version, mode, f"{share:g}").set(1 if active else 0)


def publish_model(metadata: Mapping[str, Any], version: str, threshold: float) -> None:
    """Model gauges for the version being served."""
    MODEL_INFO.labels(*_info_labels(metadata, version)).set(1)
    MODEL_TRAINED.set(int(metadata.get("trained_at") or 0) / 1000)
    MODEL_THRESHOLD.set(threshold)
    for metric, value in (metadata.get("holdout") or {}).items():
        MODEL_HOLDOUT.labels(metric).set(float(value))


def retire_model(metadata: Mapping[str, Any], version: str) -> None:
    """The info series of a model no longer served drops to 0 (the version history stays)."""
    MODEL_INFO.labels(*_info_labels(metadata, version)).set(0)


def publish_state(stats: Mapping[str, int], psi: Mapping[str, float] | None, filled: int) -> None:
    """Feature-state size and drift gauges (called at most every few seconds)."""
    for kind, size in stats.items():
        STATE_SIZE.labels(kind).set(size)
    DRIFT_WINDOW.set(filled)
    for feature, value in (psi or {}).items():
        DRIFT_PSI.labels(feature).set(value)


def count_labels(confusion: Mapping[str, int]) -> None:
    for outcome, n in confusion.items():
        if n:
            LABELLED.labels(outcome).inc(n)


def count_answers(
    flagged: np.ndarray, rule: list[str | None], action: list[str], replayed: Sequence[int]
) -> None:
    """A batch's answers by decision and by rule; those answered before (``replayed``: re-sent
    transactions given their first answer) were counted then."""
    n, n_fraud = len(flagged), int(flagged.sum())
    if replayed:
        REPLAYED.inc(len(replayed))
        n -= len(replayed)
        n_fraud -= sum(bool(flagged[i]) for i in replayed)
        again = set(replayed)
        keep = [i for i in range(len(rule)) if i not in again]
        rule, action = [rule[i] for i in keep], [action[i] for i in keep]
    PREDICTIONS.labels("fraud").inc(n_fraud)
    PREDICTIONS.labels("genuine").inc(n - n_fraud)
    count_rules(rule, action)


def count_rules(rule: list[str | None], action: list[str]) -> None:
    """One increment a (rule, action) pair of the batch, not one a transaction."""
    pairs: dict[tuple[str, str], int] = {}
    for r, a in zip(rule, action, strict=True):
        key = (r or "none", a)
        pairs[key] = pairs.get(key, 0) + 1
    for (r, a), n in pairs.items():
        RULE_HITS.labels(r, a).inc(n)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe a batch of values with one increment per touched bucket instead of one
    ``observe`` per value (each is a locked mmap write in multiprocess mode).

    Same result as ``for v in values: histogram.observe(v)``; relies on prometheus-client's
    ``_upper_bounds``/``_buckets``/``_sum`` (stable since 0.4) and falls back to the loop.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values.tolist():
            histogram.observe(v)
        return
    if len(values) == 0:
        return
    # observe() puts a value in the first bucket whose bound is >= value (le semantics).
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    for i, n in enumerate(counts.tolist()):
        if n:
            buckets[i].inc(n)
    total.inc(float(np.sum(values)))


def error_kind(status: int) -> str | None:
    if status < 400:
        return None
    return {
        400: "validation",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        413: "too_large",
        415: "unsupported_media",
        429: "rate_limited",
        503: "overloaded",
    }.get(status, "client" if status < 500 else "internal")


class RequestMetrics:
    """Pure ASGI middleware: latency histogram and errors by kind on the API routes."""

    def __init__(self, app: ASGIApp, routes: Iterable[str] = API_ROUTES) -> None:
        self.app = app
        # One histogram child per route, resolved once (``labels()`` per request showed up at
        # ~1.5 % of the worker's CPU under load).
        self.latency = {route: REQUEST_SECONDS.labels(route) for route in routes}

    async def __call__(self, scope: Scope, receive, send) -> None:
        latency = self.latency.get(scope.get("path", ""))
        if latency is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            latency.observe(time.perf_counter() - start)
            kind = error_kind(status)
            if kind is not None:
                ERRORS.labels(path, kind).inc()


EXPLAIN_SECONDS = Histogram(
    "fraud_explain_duration_seconds",
    "Time to explain one /explain request (features, score and exact tree SHAP)",
    buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
)
EXPLAINED = Counter(
    "fraud_explained_transactions_total",
    "Transactions explained, by source (new: scored for the explanation; logged: a past "
    "decision from the decision log)",
    ["source"],
)
