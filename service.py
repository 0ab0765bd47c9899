"""BentoML service: online features + the champion fraud model, with adaptive batching.

Thin on purpose: feature logic lives in ``training.online``/``training.features`` and scoring in
``training.serving``; this file declares the model, the endpoints and the metrics.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType
from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field

from training.api_models import (
    FeedbackResult,
    Label,
    LabelledTransaction,
    Prediction,
    Transaction,
    epoch_ms,
)
from training.config import get_settings
from training.http_guard import JsonOnly, quiet_client_errors
from training.prom import observe_many
from training.serving import BATCHING, MAX_BATCH, FraudScorer, ModelBundle, service_config

log = logging.getLogger("fraud.service")
SETTINGS = get_settings()
SAMPLE = Path(__file__).parent / "data" / "sample" / "transactions.json"

PREDICTIONS = Counter("fraud_predictions_total", "Scored transactions by decision", ["decision"])
SCORES = Histogram(
    "fraud_score",
    "Fraud probability of scored transactions",
    buckets=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0],
)
SCORING_SECONDS = Histogram(
    "fraud_scoring_batch_seconds",
    "Features + model time per adaptive batch",
    buckets=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0],
)
FEEDBACK = Counter("fraud_feedback_total", "Feedback labels by outcome", ["outcome"])
MODEL_INFO = Gauge(
    "fraud_model_info",
    "Served model (value 1)",
    ["name", "version", "alias"],
    multiprocess_mode="liveall",
)

ops = FastAPI(title="fraud-mlops operations")


@bentoml.service(name="fraud_detector", **service_config(SETTINGS))
@bentoml.asgi_app(ops, path="/")
class FraudDetector:
    """Scores payment transactions for fraud in real time."""

    bento_model = bentoml.models.BentoModel(f"{SETTINGS.bento_model}:latest")

    def __init__(self) -> None:
        t0 = time.perf_counter()
        quiet_client_errors()
        bundle = ModelBundle.load(Path(self.bento_model.path), self.bento_model.info.metadata)
        self.scorer = FraudScorer(bundle)
        warmed = self.scorer.warm()
        # The warmed state is ~10^5-10^6 long-lived objects; without this, every full GC
        # pass walks them and stalls the event loop for ~0.3 s (seen as a p99 cliff).
        gc.collect()
        gc.freeze()
        meta = bundle.metadata
        MODEL_INFO.labels(
            str(meta.get("mlflow_model_name")),
            self.scorer.model_version,
            str(meta.get("mlflow_alias")),
        ).set(1)
        self.sample = json.loads(SAMPLE.read_text()) if SAMPLE.exists() else []
        self.flagged, self.passed = PREDICTIONS.labels("fraud"), PREDICTIONS.labels("genuine")
        log.info(
            "model %s ready, state warmed with %d transactions in %.1fs",
            self.scorer.model_version,
            warmed,
            time.perf_counter() - t0,
        )

    @bentoml.api(batchable=True, **BATCHING)
    async def predict(
        self,
        transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)],
    ) -> Annotated[list[Prediction], ContentType("application/json")]:
        """Score transactions: fraud probability, decision at the model's threshold, version.

        Async on purpose: a batch costs ~0.1 ms of features + compiled model, less than the
        hand-off to a worker thread would."""
        t0 = time.perf_counter()
        proba, flagged = self.scorer.score([t.to_record() for t in transactions])
        SCORING_SECONDS.observe(time.perf_counter() - t0)
        version = self.scorer.model_version
        out = []
        make = Prediction.model_construct  # values are ours and already typed: skip validation
        observe_many(SCORES, proba)
        for tx, p, f in zip(transactions, proba.tolist(), flagged.tolist(), strict=True):
            out.append(
                make(
                    transaction_id=str(tx.transaction_id),
                    fraud_probability=p,
                    is_fraud=f,
                    model_version=version,
                )
            )
        n_fraud = int(flagged.sum())
        self.flagged.inc(n_fraud)
        self.passed.inc(len(out) - n_fraud)
        return out

    @bentoml.api
    def feedback(
        self,
        labels: Annotated[list[Label], Field(max_length=10_000)] = [],  # noqa: B006
        transactions: Annotated[list[LabelledTransaction], Field(max_length=10_000)] = [],  # noqa: B006
    ) -> Annotated[FeedbackResult, ContentType("application/json")]:
        """Confirmed outcomes (chargebacks): by transaction id for scored transactions, or as
        full records for transactions this service never saw. Feeds terminal risk."""
        if not labels and not transactions:
            raise InvalidArgument("labels or transactions: give at least one label")
        records = [t.to_record() for t in transactions]
        unknown = self.scorer.feedback(
            {str(lab.transaction_id): int(lab.is_fraud) for lab in labels},
            records,
            [int(t.is_fraud) for t in transactions],
        )
        applied = len(labels) - len(unknown)
        FEEDBACK.labels("applied").inc(applied)
        FEEDBACK.labels("ingested").inc(len(records))
        FEEDBACK.labels("unknown").inc(len(unknown))
        msg = (
            "ok"
            if not unknown
            else (
                "some transaction ids are unknown (never scored here or expired): "
                "resend them as full records in `transactions`"
            )
        )
        return FeedbackResult(
            applied=applied,
            ingested=len(records),
            unknown_transaction_ids=unknown,
            message=msg,
            model_version=self.scorer.model_version,
        )

    @ops.get("/health")
    def health(self) -> dict[str, Any]:
        """Status, model name/version/alias, feature-state size, uptime."""
        return self.scorer.health()

    @ops.get("/state/terminals/{terminal_id}")
    def terminal_state(self, terminal_id: str, at: datetime | None = None) -> dict[str, Any]:
        """Terminal risk windows as a transaction at ``at`` (default: now) would see them."""
        when = at or datetime.now(UTC)
        return {
            "terminal_id": terminal_id,
            "at": when.isoformat(),
            **self.scorer.terminal_risk(terminal_id, epoch_ms(when)),
        }

    @ops.api_route("/test", methods=["GET", "POST"])
    def test(self) -> dict[str, Any]:
        """Score the built-in sample end to end (without recording it in the state)."""
        txs = [Transaction.model_validate(t) for t in self.sample]
        proba, flagged = self.scorer.score([t.to_record() for t in txs], record=False)
        results = [
            {"transaction_id": str(t.transaction_id), "fraud_probability": p, "is_fraud": f}
            for t, p, f in zip(txs, proba.tolist(), flagged.tolist(), strict=True)
        ]
        ok = bool(results) and all(0.0 <= r["fraud_probability"] <= 1.0 for r in results)
        return {
            "status": "ok" if ok else "failed",
            "model_version": self.scorer.model_version,
            "n": len(results),
            "results": results,
        }


FraudDetector.add_asgi_middleware(JsonOnly, paths=("/predict", "/feedback"))  # type: ignore[attr-defined]
