"""The BentoML entry point: declares the champion model and wires the endpoints to the
``serving`` package (scorer, online features, hot swap, telemetry, HTTP guard).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from bentoml.validators import ContentType
from fastapi import Body, FastAPI, HTTPException
from pydantic import AfterValidator, Field

from serving import bentoml_fixes, clock, durable_answers, rules_api
from serving import telemetry as tm
from serving.api_models import (
    API_KEY,
    EXPLAIN_MAX,
    ChallengerRequest,
    Explanation,
    FeedbackResult,
    LabelledTransactions,
    Labels,
    Prediction,
    ReloadRequest,
    Transaction,
    epoch_ms,
    predictions,
    unique_ids,
)
from serving.auth import ApiKeyAuth, LoopbackOnly
from serving.bento_config import BATCHING, MAX_BATCH, service_config, settle_gc
from serving.challenger import CHAMPION
from serving.durable_answers import DurableAnswers
from serving.http_guard import JsonOnly, Limits, quiet_client_errors
from serving.reason_codes import NotExplainable
from serving.runtime import build
from serving.scorer import AlreadyScored, SwapError
from serving.state import StateUnavailable
from training.core.bento_model import served_tag
from training.core.config import get_settings
from training.core.explain import TOP_K

# A child of "bentoml": BentoML configures handlers for its own logger tree only, so this is
# how our lines (model ready, hot swaps) reach the server log.
log = logging.getLogger("bentoml.fraud_service")
SETTINGS = get_settings()
SAMPLE = Path(__file__).parent / "data" / "sample" / "transactions.json"

ops = FastAPI(title="fraud-mlops operations")
ops.include_router(rules_api.router)


@bentoml.service(name="fraud_detector", **service_config(SETTINGS))
@bentoml.asgi_app(ops, path="/")
class FraudDetector:
    """Scores payment transactions for fraud in real time."""

    # The pinned version (the last champion imported or hot-swapped to), not the store's latest:
    # a restart after a roll-back serves the version rolled back to.
    bento_model = bentoml.models.BentoModel(served_tag(SETTINGS.bento_model))

    def __init__(self) -> None:
        t0 = time.perf_counter()
        check_keys()
        if SETTINGS.bentoml_fixes:  # in the worker, before its first request
            applied = bentoml_fixes.apply(skip=SETTINGS.skipped_fixes())
            log.info("BentoML request-path fixes applied: %s", applied)
        quiet_client_errors()
        self.runtime = build(SETTINGS, Path(self.bento_model.path), self.bento_model.info.metadata)
        self.scorer, self.decisions = self.runtime.scorer, self.runtime.decisions
        self.clock = self.runtime.clock
        clock.install(self.clock)  # request validation checks tx_datetime against it
        durable_answers.install(self.decisions.journal if self.decisions else None)
        rules_api.install(self.runtime)  # /rules, /rules/backtest, /admin/rules, /admin/lists
        settle_gc()  # the warmed state: ~10^5-10^6 long-lived objects out of GC's sight
        self.sample = json.loads(SAMPLE.read_text()) if SAMPLE.exists() else []
        # After the state store failed, the first batch checks that it did not come back empty
        # before trusting it (not only the next upkeep): no batch scores on a lost state.
        self.state_suspect = False
        self.runtime.upkeep()
        log.info(
            "model %s ready, state warmed with %d transactions (and %s from the decision log) "
            "in %.1fs",
            self.scorer.model_version,
            self.runtime.warmed,
            self.scorer.warmup.replayed,
            time.perf_counter() - t0,
        )

    @bentoml.api(batchable=True, **BATCHING)
    async def predict(
        self,
        transactions: Annotated[
            list[Transaction],
            Field(min_length=1, max_length=MAX_BATCH),
            AfterValidator(unique_ids),
        ],
    ) -> Annotated[list[Prediction], ContentType("application/json")]:
        """Score transactions: fraud probability, decision at the model's threshold, version.

        Async on purpose: scoring is CPU work for one core; a hand-off to a worker thread
        would add its cost and no parallelism. The rows are returned as dicts: BentoML validates
        its output into ``Prediction`` anyway, and pydantic-core does that ~3.5x faster than
        ``Prediction.model_construct`` builds the objects in Python (0.6 vs 2.2 µs a row)."""
        t0 = time.perf_counter()
        records = [t.to_record() for t in transactions]
        degraded = False
        try:
            if self.state_suspect:
                self.confirm_state()
            scored = self.scorer.score(records)
        except StateUnavailable as exc:
            scored = self.without_state(records, exc)
            degraded = True
        proba, flagged = scored.proba, scored.flagged
        versions = scored.versions or [scored.version] * len(records)
        challenged = scored.challenged
        threshold = np.asarray(challenged.thresholds) if challenged else self.scorer.threshold
        decided = self.runtime.rules.decide_batch(records, scored.columns, proba, threshold)
        actions = decided.actions()
        if self.decisions is not None:  # durable before answered: DurableAnswers holds them
            self.log_decisions(transactions, records, scored, versions, degraded, decided)
        self.clock.advance(max(r.time_ms for r in records))
        tm.SCORING_SECONDS.observe(time.perf_counter() - t0)
        tm.BATCH_SIZE.observe(len(records))
        tm.observe_many(tm.SCORES, proba)
        arms = challenged.arms if challenged else [CHAMPION] * len(records)
        out = predictions(records, proba, flagged, versions, decided, arms, degraded)
        tm.count_answers(flagged, decided.rule, actions, scored.replayed)
        if t0 >= self.runtime.upkeep_due:
            self.runtime.upkeep()  # state health, following other workers, gauges
        return out

    def log_decisions(
        self,
        transactions: list[Transaction],
        records: list[Any],
        scored: Any,
        versions: list[str],
        degraded: bool,
        decided: Any,
    ) -> None:
        """Append the batch's decisions to the journal (no wait: the answers wait for the fsync
        in :class:`~serving.durable_answers.DurableAnswers`, while the next batch scores); 503
        when the disk fails (nothing is answered that is not durable)."""
        assert self.decisions is not None
        lines = self.decisions.decision_lines(
            records,
            [t.api_key for t in transactions],
            scored.proba.tolist(),
            scored.flagged.tolist(),
            versions,
            scored.columns,
            self.scorer.bundle.metadata.get("mlflow_model_name") or SETTINGS.registered_model,
            self.scorer.threshold,
            degraded,
            scored.challenged,
            decided,
        )
        try:
            self.decisions.journal.write(lines)
        except OSError as exc:
            tm.LOG_FAILURES.inc()
            raise ServiceUnavailable(
                f"the decision journal is not writable ({exc}); retry"
            ) from exc

    @bentoml.on_shutdown
    def close_decision_log(self) -> None:
        """On a clean stop: the journal delivered to the store when it answers."""
        if self.decisions is not None:
            self.decisions.close()

    def confirm_state(self) -> None:
        """The store answers again: StateUnavailable unless it still holds the warmed state
        (an emptied one starts re-warming here)."""
        problem = self.scorer.check_state()
        if problem is not None:
            raise StateUnavailable(problem)
        self.state_suspect = False

    def without_state(self, records: list[Any], exc: StateUnavailable) -> Any:
        """The state store is unavailable: 503 (reject) or scores without history (fallback)."""
        self.state_suspect = True
        if SETTINGS.state_failure == "reject":
            tm.DEGRADED.labels("rejected").inc(len(records))
            raise ServiceUnavailable(state_down(exc))
        tm.DEGRADED.labels("fallback").inc(len(records))
        return self.scorer.score_without_state(records)

    def __is_ready__(self) -> bool:
        """/readyz: not ready while the state store is unavailable or re-warming."""
        ready = self.scorer.check_state() is None
        tm.STATE_UP.set(ready)
        return ready

    @bentoml.api
    def feedback(
        self,
        labels: Labels = [],  # noqa: B006
        transactions: LabelledTransactions = [],  # noqa: B006
    ) -> Annotated[FeedbackResult, ContentType("application/json")]:
        """Confirmed outcomes (chargebacks): by transaction id for scored transactions, or as
        full records for transactions this service never saw. Feeds terminal risk."""
        if not labels and not transactions:
            raise InvalidArgument("labels or transactions: give at least one label")
        records = [t.to_record() for t in transactions]
        try:
            update = self.scorer.feedback(
                {str(lab.transaction_id): int(lab.is_fraud) for lab in labels},
                records,
                [int(t.is_fraud) for t in transactions],
            )
        except StateUnavailable as exc:  # nothing applied: the client sends them again
            raise ServiceUnavailable(state_down(exc, "labels not applied")) from exc
        if self.decisions is not None:  # durable before the acknowledgement
            given = {str(lab.transaction_id): int(lab.is_fraud) for lab in labels}
            given.update(
                {
                    r.transaction_id: int(t.is_fraud)
                    for r, t in zip(records, transactions, strict=True)
                }
            )
            key = API_KEY.get()
            ingested = self.decisions.feedback_record_lines(
                records, key, SETTINGS.bento_model, self.scorer.model_version
            )  # the records first: their label events refer to them
            try:
                self.decisions.record_sync(ingested + self.decisions.label_lines(given, key))
            except OSError as exc:
                tm.LOG_FAILURES.inc()
                raise ServiceUnavailable(
                    f"the decision journal is not writable ({exc}); labels not logged, retry"
                ) from exc
        if records:
            self.clock.advance(max(r.time_ms for r in records))
        unknown = update.unknown
        applied = len(labels) - len(unknown)
        tm.FEEDBACK.labels("applied").inc(applied)
        tm.FEEDBACK.labels("ingested").inc(len(records))
        tm.FEEDBACK.labels("unknown").inc(len(unknown))
        tm.count_labels(update.confusion)
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

    @bentoml.api
    def explain(
        self,
        transactions: Annotated[
            list[Transaction],
            Field(min_length=1, max_length=EXPLAIN_MAX),
            AfterValidator(unique_ids),
        ],
        top_k: Annotated[int, Field(ge=1, le=64)] = TOP_K,
    ) -> Annotated[list[Explanation], ContentType("application/json")]:
        """Reason codes: the score and decision /predict would give now, with the top_k
        feature contributions (exact tree SHAP) in plain words. Records nothing: a
        transaction scored before is a 409 (explain it with GET /explain/{transaction_id})."""
        t0 = time.perf_counter()
        try:
            out = self.runtime.reason_codes.explain_new(
                [t.to_record() for t in transactions], top_k
            )
        except StateUnavailable as exc:
            raise ServiceUnavailable(state_down(exc)) from exc
        except (AlreadyScored, NotExplainable) as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.CONFLICT) from exc
        tm.EXPLAIN_SECONDS.observe(time.perf_counter() - t0)
        tm.EXPLAINED.labels("new").inc(len(out))
        return out  # type: ignore[return-value]

    @ops.get("/explain/{transaction_id}")
    def explain_logged(self, transaction_id: str, top_k: int = TOP_K) -> dict[str, Any]:
        """Reason codes of a logged decision, from the feature vector it was scored on and by
        the model version that scored it."""
        if not 1 <= top_k <= 64:
            raise HTTPException(400, "top_k: between 1 and 64")
        t0 = time.perf_counter()
        try:
            out = self.runtime.reason_codes.explain_logged(transaction_id, top_k)
        except NotExplainable as exc:
            raise HTTPException(409, str(exc)) from exc
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except sqlalchemy_errors() as exc:
            raise HTTPException(503, f"the decision store is unavailable ({exc}); retry") from exc
        tm.EXPLAIN_SECONDS.observe(time.perf_counter() - t0)
        tm.EXPLAINED.labels("logged").inc()
        return out

    @ops.get("/health")
    def health(self) -> dict[str, Any]:
        """Status, model name/version/alias, feature-state size, BentoML fixes, uptime."""
        return {
            **self.scorer.health(),
            "clock": {"mode": self.clock.mode, "now": clock.iso(self.clock.now_ms())},
            "auth": SETTINGS.auth,
            "decision_log": {
                **self.decisions.health(),
                "replayed": self.scorer.warmup.replayed,
                "replay_error": self.scorer.warmup.replay_error,
            }
            if self.decisions
            else {"enabled": False},
            "challenger": self.scorer.challenger.health()
            if self.scorer.challenger
            else {"mode": "off", "error": self.runtime.challenger_error},
            "rules": self.runtime.rules.status(),
            "bentoml_fixes": bentoml_fixes.applied(),
        }

    @ops.get("/state/terminals/{terminal_id}")
    def terminal_state(self, terminal_id: str, at: datetime | None = None) -> dict[str, Any]:
        """Terminal risk windows as a transaction at ``at`` (default: now) would see them."""
        when = at or datetime.now(UTC)
        try:
            risk = self.scorer.terminal_risk(terminal_id, epoch_ms(when))
        except StateUnavailable as exc:
            raise HTTPException(503, state_down(exc)) from exc
        return {"terminal_id": terminal_id, "at": when.isoformat(), **risk}

    @ops.post("/admin/challenger")
    def challenger(self, body: ChallengerRequest) -> dict[str, Any]:
        """Score a Bento-store version beside the champion: shadow (answers unchanged) or
        canary (a share of customers answered by it, rolled back automatically); off stops.
        With several workers on Redis, the others follow within seconds. Promote it with
        /admin/reload to its version. Needs a key with scope admin."""
        try:
            return self.runtime.set_challenger(body.mode, body.version, body.share)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except SwapError as exc:
            raise HTTPException(409, str(exc)) from exc

    @ops.post("/admin/reload")
    def reload(self, body: Annotated[ReloadRequest | None, Body()] = None) -> dict[str, Any]:
        """Hot swap: load a model from the Bento store beside the served one, then switch
        atomically; requests keep being answered meanwhile. Needs a key with scope admin."""
        try:
            return self.runtime.hot_swap.swap_to(body.version if body else None)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except SwapError as exc:
            raise HTTPException(409, str(exc)) from exc

    @ops.api_route("/test", methods=["GET", "POST"])
    def test(self) -> dict[str, Any]:
        """Score the built-in sample end to end (without recording it in the state)."""
        txs = [Transaction.model_validate(t, context={"any_time": True}) for t in self.sample]
        records = [t.to_record() for t in txs]
        scored = self.scorer.score(records, record=False)
        proba, flagged, version = scored.proba, scored.flagged, scored.version
        decided = self.runtime.rules.decide_batch(
            records, scored.columns, proba, self.scorer.threshold
        )
        results = [
            {"transaction_id": str(t.transaction_id), "fraud_probability": p, "is_fraud": f,
             "action": a, "rule": r}
            for t, p, f, a, r in zip(
                txs, proba.tolist(), flagged.tolist(), decided.actions(), decided.rule,
                strict=True,
            )
        ]  # fmt: skip
        ok = bool(results) and all(0.0 <= r["fraud_probability"] <= 1.0 for r in results)
        return {
            "status": "ok" if ok else "failed",
            "model_version": version,
            "n": len(results),
            "results": results,
        }


def state_down(exc: Exception, consequence: str = "") -> str:
    """The 503 message of an unavailable feature state (what was not done, then retry)."""
    then = f"{consequence}, retry" if consequence else "retry"
    return f"the online feature state is unavailable ({exc}); {then}"


def sqlalchemy_errors() -> type[Exception]:
    """The decision store's connection errors (SQLAlchemy, imported with the log)."""
    from sqlalchemy.exc import OperationalError

    return OperationalError


def check_keys() -> None:
    """Refuse to start with FRAUD_AUTH=keys and no active key: every call would be a 401."""
    from training.core import api_keys

    if SETTINGS.auth == "keys" and not api_keys.load(SETTINGS.api_keys_file).active():
        raise RuntimeError(
            f"FRAUD_AUTH=keys and no active API key in {SETTINGS.api_keys_file}: create one "
            "with `fraudops keys create --name NAME --scopes score,label,read` (or set "
            "FRAUD_AUTH=off to serve loopback clients only, without keys)"
        )


# The first middleware added is the outermost: request metrics also see the guards' answers
# (401/403/429 included); the size and in-flight caps come before the key check.
FraudDetector.add_asgi_middleware(tm.RequestMetrics)  # type: ignore[attr-defined]
FraudDetector.add_asgi_middleware(DurableAnswers)  # type: ignore[attr-defined]
FraudDetector.add_asgi_middleware(  # type: ignore[attr-defined]
    Limits, max_body=SETTINGS.max_body_bytes, max_in_flight=SETTINGS.max_in_flight
)
if SETTINGS.auth == "keys":
    FraudDetector.add_asgi_middleware(  # type: ignore[attr-defined]
        ApiKeyAuth,
        keys_file=SETTINGS.api_keys_file,
        redis_url=SETTINGS.redis_url if SETTINGS.state_backend == "redis" else None,
        redis_prefix=SETTINGS.state_prefix,
        metrics_need_read=SETTINGS.metrics_auth,
    )
else:
    FraudDetector.add_asgi_middleware(LoopbackOnly)  # type: ignore[attr-defined]
FraudDetector.add_asgi_middleware(JsonOnly, paths=("/predict", "/feedback", "/explain"))  # type: ignore[attr-defined]
