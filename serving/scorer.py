"""The scorer: the imported model, the online feature state and scoring, framework-free
(``service.py`` wraps it in BentoML; tests and other front ends call it in process).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import joblib
import numpy as np
import pandas as pd

from serving.challenger import CANARY, Challenged, Challenger
from serving.clock import ServiceClock, now_ms
from serving.online_features import OnlineFeatures, TxRecord, new_state, terminal_windows
from serving.redis_state import RedisFeatureState
from serving.state import FeatureState, LabelUpdate, StateUnavailable
from training.core import bento_model, drift, features, schema
from training.core.compiled import CompiledModel
from training.core.config import Settings
from training.core.features import FeatureConfig

if TYPE_CHECKING:
    from training.core.explain import ForestExplainer

_EXPLAINER_LOCK = threading.Lock()

# Adaptive batching. Measured here (2 cores, compiled 100-tree forest): inside the busy server,
# where a batch meets cold CPU caches, scoring costs about 0.4 ms + 30 us per transaction
# (`make bench`, last lines), so even the largest batch (1,000 transactions, the request
# limit) takes ~30 ms.
# max_batch_size=1000 lets one call absorb many concurrent requests; max_latency_ms is a hard
# deadline in BentoML (requests that would miss it get 503), so it is set well above the
# worst measured batch cost plus queueing at peak load (p99 < 0.15 s at 1,300 req/s).
MAX_BATCH = 1000
MAX_LATENCY_MS = 1000
BATCHING = {"max_batch_size": MAX_BATCH, "max_latency_ms": MAX_LATENCY_MS}


# Young-generation collections every 50,000 net allocations instead of 700: requests make many
# short-lived objects, nearly all freed by reference counting, so frequent young passes are
# mostly wasted. Measured with `python -m tests.bench.ab` (wrk -c32, single transactions): CPU
# per request 419 -> 381 and 420 -> 405 µs in two interleaved runs; p99 under hey's 500 req/s
# bursts unchanged (26.5-31.2 ms against 24.1-32.3 ms with the default).
GC_THRESHOLDS = (50_000, 50, 1_000)


def settle_gc() -> None:
    """Once start-up (model load, state warm-up) is done: collect, freeze what survived so full
    passes never walk it again (they stalled the loop ~0.3 s over the warmed state), and collect
    the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def service_config(settings: Settings) -> dict[str, Any]:
    """``@bentoml.service`` settings shared by the service and its benchmark baselines."""
    return {
        # The in-memory feature state is per process: one worker unless the state is in Redis.
        "workers": settings.workers,
        "traffic": {"timeout": 30},
        # Per-request work we do not use (py-spy under load, see docs/performance.md): no
        # tracing spans on the scoring routes, no access-log line per request by default.
        "tracing": {"excluded_urls": ["/predict", "/feedback", "/metrics", "/readyz", "/livez"]},
        "logging": {"access": {"enabled": settings.access_log}},
        "http": {"port": settings.port},  # host comes from `--host` (fraudops serve: 127.0.0.1)
    }


@dataclass
class ModelBundle:
    """What the Bento model directory holds. The scikit-learn pipeline is only unpickled when
    asked for (no compiled twin, benchmarks): serving from the twin never imports sklearn."""

    path: Path
    info: dict[str, Any]
    metadata: dict[str, Any]
    warmup_path: Path | None
    compiled: CompiledModel | None = None
    reference: drift.Reference | None = None
    _pipeline: Any = field(default=None, repr=False)
    _explainer: ForestExplainer | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any], threads: int = 1) -> ModelBundle:
        """The bundle in ``path``; the compiled twin runs large batches on ``threads`` threads."""
        files = bento_model.Layout.of(path)
        return cls(
            path=path,
            info=json.loads(files.info.read_text()),
            metadata=dict(metadata),
            warmup_path=files.warmup if files.warmup.exists() else None,
            compiled=(
                CompiledModel.load(files.compiled, threads) if files.compiled.exists() else None
            ),
            reference=(
                drift.Reference.load(files.drift_reference)
                if files.drift_reference.exists()
                else None
            ),
        )

    def history_end_ms(self) -> int:
        """The time of the last transaction in the shipped history (now, without one)."""
        if self.warmup_path is None:
            return now_ms()
        times = pd.read_parquet(self.warmup_path, columns=[schema.TX_DATETIME])[schema.TX_DATETIME]
        if times.empty:
            return now_ms()
        return int(pd.Timestamp(times.max()).value // 1_000_000)

    def explainer(self) -> ForestExplainer:
        """The exact tree-SHAP explainer of this model (built on first use: it unpickles the
        pipeline, ~1 s)."""
        with _EXPLAINER_LOCK:
            if self._explainer is None:
                from training.core.explain import ForestExplainer

                self._explainer = ForestExplainer(self.pipeline, list(self.info["feature_columns"]))
            return self._explainer

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            pipeline = joblib.load(bento_model.Layout.of(self.path).pipeline)
            model = getattr(pipeline, "named_steps", {}).get("forest")
            # one thread: joblib's pool costs ~20 ms a call at this size (a soft vote's members)
            for part in [model, *getattr(model, "estimators_", [])] if model is not None else []:
                if hasattr(part, "n_jobs"):
                    part.n_jobs = 1
            self._pipeline = pipeline
        return self._pipeline


def feature_config(info: dict[str, Any]) -> FeatureConfig:
    cfg = dict(info.get("feature_config") or {})
    if "windows" in cfg:
        cfg["windows"] = tuple(cfg["windows"])
    return FeatureConfig(**cfg)


def state_for(settings: Settings, cfg: FeatureConfig) -> FeatureState:
    """The online feature state the settings ask for (Redis: connected and checked)."""
    if settings.state_backend == "redis":
        return RedisFeatureState.from_url(
            settings.redis_url,
            cfg.customer_retention_ms,
            cfg.terminal_retention_ms,
            settings.state_prefix,
            timeout_s=settings.redis_timeout_ms / 1000,
        )
    return new_state(cfg)


def clock_for(settings: Settings, scorer: FraudScorer) -> ServiceClock:
    """The service clock the settings ask for; a stream clock starts where the model's
    history ends (or, with the Redis state, where the furthest worker's clock is)."""
    state = scorer.features.state
    return ServiceClock(
        settings.clock,
        max_age_ms=min(scorer.cfg.customer_retention_ms, scorer.cfg.terminal_retention_ms),
        max_ahead_ms=1000
        * (settings.clock_max_step_s if settings.clock == "stream" else settings.clock_max_skew_s),
        start_ms=scorer.bundle.history_end_ms(),
        shared=state.stream_clock if isinstance(state, RedisFeatureState) else None,
    )


log = logging.getLogger("bentoml.fraud_service.state")
TOPICS = ("model", "challenger")  # what workers sharing Redis tell each other
REWARMING = "the state store came back empty: warming it again from the model's history"


class Scored(NamedTuple):
    proba: np.ndarray
    flagged: np.ndarray
    version: str  # the model that scored the batch
    versions: list[str] | None = None  # per transaction, when some were answered before
    replayed: tuple[int, ...] = ()  # positions answered before: the same answer, not recounted
    columns: dict[str, np.ndarray] | None = None  # the feature vectors the model scored
    challenged: Challenged | None = None  # the challenger's part (shadow scores, canary answers)


class SwapError(RuntimeError):
    """The new model cannot take over from the served one in place."""


class AlreadyScored(ValueError):
    """Transactions the service answered before (their ids in ``ids``)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(
            f"already scored here: {ids[:10]}; explain a past decision with "
            "GET /explain/{transaction_id}"
        )
        self.ids = ids


class FraudScorer:
    """Scores batches of transactions against the online state; takes feedback labels.

    The model can be swapped while serving (:meth:`swap`): the online state stays, every batch
    is scored by exactly one model."""

    def __init__(
        self,
        bundle: ModelBundle,
        state: FeatureState | None = None,
        drift_window: int = 10_000,
    ) -> None:
        self.cfg = feature_config(bundle.info)
        self.drift_size = drift_window
        self.features = OnlineFeatures(
            state or new_state(self.cfg), self.cfg, bool(bundle.info.get("categorical"))
        )
        self.lock = threading.Lock()
        self.started = time.time()
        state = self.features.state  # what was announced before this process started is not ours
        self._generations_at_start = {
            topic: state.generation(topic) if isinstance(state, RedisFeatureState) else 0
            for topic in TOPICS
        }
        self.warmed = 0
        self.warm_token: str | None = None  # the warm-up's history (Redis: its marker)
        self.rewarming = False  # the state store came back empty and is being warmed again
        self.rewarms = 0
        self.last_rewarm_s = 0.0  # how long the last re-warm took (history + decision log)
        # Told when a re-warm ends (its seconds): the worker that re-warmed may serve no
        # request afterwards (its clients' connections held by another worker), so its
        # figures are published from here, not on the request path.
        self.on_rewarmed: Callable[[float], None] | None = None
        # The decision log since the model's history, replayed after every fresh warm-up
        # (start, Redis back empty); None: no log. See serving/decision_log.py.
        self.replay_source: Callable[[int], pd.DataFrame] | None = None
        self.replayed: int | None = None  # transactions replayed at the last warm-up
        self.replay_error: str | None = None
        self.replayed_until_ms = 0  # the newest transaction time replayed
        # Degraded scoring: the same features over an empty state (no history at all).
        self.challenger: Challenger | None = None  # a live challenger (shadow or canary)
        self.stateless = OnlineFeatures(
            new_state(self.cfg), self.cfg, bool(bundle.info.get("categorical"))
        )
        self._install(bundle)

    def _install(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.columns: list[str] = list(bundle.info["feature_columns"])
        self.threshold = float(bundle.info["threshold"])
        self.categorical = bool(bundle.info.get("categorical"))
        self.features.categorical = self.categorical
        self.stateless.categorical = self.categorical
        self.drift = (
            drift.DriftWindow(bundle.reference, self.drift_size, skip=features.CALENDAR_FEATURES)
            if bundle.reference
            else None
        )

    def swap(self, bundle: ModelBundle) -> str:
        """Serve ``bundle`` from the next batch on; returns the previous version.

        The new model is fully loaded before the switch, which happens under the scoring lock
        (a batch in flight finishes on the old model). The online state is kept, so the feature
        configuration must be the same."""
        if feature_config(bundle.info) != self.cfg:
            raise SwapError(
                "the new model uses another feature configuration; restart the service "
                "to rebuild the online state"
            )
        if bundle.compiled is None:
            _ = bundle.pipeline  # unpickle now, not inside the first batch
        previous = self.model_version
        with self.lock:
            self._install(bundle)
            challenger = self.challenger
            if challenger is not None:
                if challenger.version == self.model_version:  # promoted: it is the champion now
                    self.challenger = None
                    challenger.retire()
                else:
                    challenger.champion_version = self.model_version
        self.announce("model", self.model_version)  # the other workers follow
        return previous

    def announce(self, topic: str, value: str) -> int:
        """Tell the other workers (shared state only) on ``topic`` (:data:`TOPICS`); the
        announcement's generation, 0 when there is nobody to tell or Redis is unavailable (the
        change stands here; the others keep what they serve, logged)."""
        state = self.features.state
        if not isinstance(state, RedisFeatureState):
            return 0
        try:
            return state.announce(topic, value)
        except StateUnavailable as exc:
            log.warning("could not tell the other workers (%s %s): %s", topic, value, exc)
            return 0

    def announced(self, topic: str) -> tuple[int, str] | None:
        """What another worker announced on ``topic`` since this process started (generation,
        value); None without a shared state."""
        state = self.features.state
        if not isinstance(state, RedisFeatureState):
            return None
        return state.announced(topic, after=self._generations_at_start[topic])

    def announced_model(self) -> str | None:
        """The version a hot swap in another worker switched to (shared state only)."""
        said = self.announced("model")
        return said[1] if said else None

    @property
    def model_version(self) -> str:
        return str(self.bundle.metadata.get("mlflow_model_version", "unknown"))

    def warm(self) -> int:
        """Materialise the state from the history shipped with the model."""
        if self.bundle.warmup_path is None:
            return 0
        state = self.features.state
        if isinstance(state, RedisFeatureState):  # shared: the first worker warms it for all
            token = hashlib.sha1(self.bundle.warmup_path.read_bytes()).hexdigest()[:16]
            self.warm_token = token
            done = state.claim_warmup(token)
            if done is not None:
                self.warmed = done
                return done
            self.warmed = self._warm_from(self.bundle.warmup_path)
            self._replay_log()
            state.warmup_done(token, self.warmed)
            return self.warmed
        self.warmed = self._warm_from(self.bundle.warmup_path)
        self._replay_log()
        return self.warmed

    def _replay_log(self) -> None:
        """After a fresh warm-up: the logged decisions and labels since the history's end."""
        if self.replay_source is None:
            return
        try:
            t0 = time.perf_counter()
            log_rows = self.replay_source(self.bundle.history_end_ms())
            self.replayed = self.replay(log_rows)
            self.replay_error = None
            log.info(
                "decision log: %d transactions replayed into the state in %.1fs",
                self.replayed,
                time.perf_counter() - t0,
            )
        except Exception as exc:  # the store is down: serve on, say so in /health
            self.replayed, self.replay_error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("decision log not replayed into the state: %s", self.replay_error)

    def replay(self, rows: pd.DataFrame) -> int:
        """Logged decisions (oldest first; the columns of the decision store, plus ``label``)
        back into the state as they were recorded live, then their latest labels: the state
        a worker that never stopped would have."""
        rows = rows[~rows["degraded"].astype(bool)]  # scored without the state: never recorded
        if rows.empty:
            return 0
        sent = rows["kind"] == "feedback"  # records sent to /feedback, never scored
        ingested, rows = rows[sent], rows[~sent]
        records, sent_records = _logged_records(rows), _logged_records(ingested)
        last = max(r.time_ms for r in (*records, *sent_records))
        self.replayed_until_ms = max(self.replayed_until_ms, last)
        flagged = rows["is_fraud"].astype(int).tolist()
        proba = rows["probability"].astype(float).tolist()
        versions = rows["model_version"].astype(str).tolist()
        state = self.features.state
        bulk = state.bulk_calls() if isinstance(state, RedisFeatureState) else nullcontext()
        # recorded as served: runs of one model version, in batches of at most 1,000
        runs = [
            (version, idx[k : k + 1_000])
            for version, group in itertools.groupby(range(len(records)), key=versions.__getitem__)
            for idx in [list(group)]
            for k in range(0, len(idx), 1_000)
        ]
        with self.lock, bulk:
            if len(ingested):
                sent_labels = [0 if pd.isna(lab) else int(bool(lab)) for lab in ingested["label"]]
                self.features.ingest(sent_records, sent_labels)
            for version, idx in runs:
                i, j = idx[0], idx[-1] + 1
                self.features.compute_columns(records[i:j], True, decided_later=True)
                self.features.record(records[i:j], flagged[i:j], proba[i:j], version)
            labels = {
                str(tx): int(bool(lab))
                for tx, lab in zip(rows["transaction_id"], rows["label"], strict=True)
                if lab is not None and lab == lab  # not None/NaN
            }
            if labels:
                self.features.feedback(labels)
        return len(records) + len(sent_records)

    def _warm_from(self, path: Path) -> int:
        history = schema.normalize(pd.read_parquet(path))
        if isinstance(self.features.state, RedisFeatureState):  # atomic scripts: no lock needed
            return self.features.warm(history)
        with self.lock:
            return self.features.warm(history)

    def check_state(self) -> str | None:
        """What is wrong with the state store now (None: nothing). Pings a Redis state; when
        it came back empty, starts warming it again from the model's history in a thread."""
        state = self.features.state
        if not isinstance(state, RedisFeatureState):
            return None
        if self.rewarming:
            return REWARMING
        try:
            state.ping()
            if self.warm_token is None or state.warmed(self.warm_token):
                return None
        except StateUnavailable as exc:
            return str(exc)
        self.rewarming = True
        threading.Thread(target=self._rewarm, name="state-rewarm", daemon=True).start()
        return REWARMING

    def _rewarm(self) -> None:
        try:
            t0 = time.perf_counter()
            n = self.warm()
            self.rewarms += 1
            self.last_rewarm_s = time.perf_counter() - t0
            if self.on_rewarmed is not None:
                self.on_rewarmed(self.last_rewarm_s)
            log.warning(
                "state store came back empty: warmed again with %d transactions in %.1fs",
                n,
                time.perf_counter() - t0,
            )
        except Exception:  # retried at the next check
            log.exception("state store: re-warm failed")
        finally:
            self.rewarming = False

    def score(self, batch: Sequence[TxRecord], record: bool = True) -> Scored:
        """Fraud probabilities, decisions and the model version that produced them (read under
        the same lock: a hot swap never mislabels a batch); records the transactions unless
        ``record`` is off."""
        if not batch:
            return Scored(np.zeros(0), np.zeros(0, dtype=bool), self.model_version)
        if self.rewarming:
            raise StateUnavailable(REWARMING)
        with self.lock:
            cols = self.features.compute_columns(batch, record, decided_later=True)
            t_model = time.perf_counter()
            if self.bundle.compiled is not None:
                proba = self.bundle.compiled.predict_proba(cols)
            else:
                frame = pd.DataFrame({c: cols[c] for c in self.columns})
                proba = self.bundle.pipeline.predict_proba(frame)[:, 1]
            model_s = time.perf_counter() - t_model
            flagged = proba >= self.threshold
            version = self.model_version
            challenged = None
            if record and self.challenger is not None:
                challenged = self.challenger.take_part(
                    batch, cols, proba, flagged, model_s, self.threshold
                )
            canary = challenged.canary_rows if challenged is not None else []
            versions = None
            if challenged is not None:
                proba, flagged = challenged.proba, challenged.flagged
                if canary:
                    versions = list(challenged.versions)
            before = self.features.state.answered(batch) if record else {}
            if before:  # re-sent transactions: their first answer, whatever the history now
                versions = versions or [version] * len(batch)
                for i, (p, d, v) in before.items():
                    proba[i], flagged[i], versions[i] = p, d == 1, v
            if record:
                self._record(batch, proba, flagged, version, canary, challenged)
                if self.drift is not None:
                    self.drift.add(cols)
        return Scored(proba, flagged, version, versions, tuple(before), cols, challenged)

    def _record(
        self,
        batch: Sequence[TxRecord],
        proba: np.ndarray,
        flagged: np.ndarray,
        version: str,
        canary: list[int],
        challenged: Challenged | None,
    ) -> None:
        """The batch's decisions into the state; a canary's rows with its version (a re-sent
        transaction gets the model that answered it)."""
        decisions = flagged.astype(np.int8).tolist()
        answers = proba.tolist()
        if not canary or challenged is None:
            self.features.record(batch, decisions, answers, version)
            return
        for arm in (CANARY, "champion"):
            rows = [i for i, a in enumerate(challenged.arms) if a == arm]
            if rows:
                self.features.record(
                    [batch[i] for i in rows],
                    [decisions[i] for i in rows],
                    [answers[i] for i in rows],
                    challenged.versions[rows[0]],
                )

    def set_challenger(self, challenger: Challenger | None) -> Challenger | None:
        """Score beside the champion with ``challenger`` from the next batch on (None: stop);
        the previous one."""
        if challenger is not None and feature_config(challenger.bundle.info) != self.cfg:
            raise SwapError(
                "the challenger uses another feature configuration than the served model"
            )
        with self.lock:
            previous, self.challenger = self.challenger, challenger
        if previous is not None and previous is not challenger:
            previous.retire()
        return previous

    def preview(self, batch: Sequence[TxRecord]) -> tuple[Scored, ModelBundle]:
        """Score ``batch`` as /predict would now, recording nothing, and the model that did
        (for explanations). AlreadyScored names transactions answered before: the state holds
        them, so their features now would count them twice."""
        if self.rewarming:
            raise StateUnavailable(REWARMING)
        with self.lock:
            cols = self.features.compute_columns(batch, record=False)
            before = self.features.state.answered(batch)
            bundle = self.bundle
        if before:
            raise AlreadyScored([batch[i].transaction_id for i in sorted(before)])
        if bundle.compiled is not None:
            proba = bundle.compiled.predict_proba(cols)
        else:
            proba = bundle.pipeline.predict_proba(pd.DataFrame({c: cols[c] for c in self.columns}))[
                :, 1
            ]
        threshold = float(bundle.info["threshold"])
        version = str(bundle.metadata.get("mlflow_model_version", "unknown"))
        return Scored(proba, proba >= threshold, version, columns=cols), bundle

    def score_without_state(self, batch: Sequence[TxRecord]) -> Scored:
        """Degraded scoring while the state store is unavailable: the features computed with
        no history (as for a first-time customer at a new terminal); nothing is recorded."""
        bundle = self.bundle
        cols = self.stateless.compute_columns(batch, record=False)
        if bundle.compiled is not None:
            proba = bundle.compiled.predict_proba(cols)
        else:
            frame = pd.DataFrame({c: cols[c] for c in self.columns})
            proba = bundle.pipeline.predict_proba(frame)[:, 1]
        return Scored(proba, proba >= self.threshold, self.model_version, columns=cols)

    def feedback(
        self,
        labels: dict[str, int],
        records: Sequence[TxRecord] = (),
        record_labels: Sequence[int] = (),
    ) -> LabelUpdate:
        """Apply labels by id and ingest labelled records never seen; unknown ids and the
        confusion counts of the decisions the labels resolve."""
        if self.rewarming:
            raise StateUnavailable(REWARMING)
        with self.lock:
            if records:
                self.features.ingest(records, record_labels)
            update = self.features.feedback(labels) if labels else LabelUpdate()
            challenger = self.challenger
        if challenger is not None and labels:
            challenger.label(labels)
        return update

    def drift_psi(self, min_transactions: int) -> dict[str, float] | None:
        """PSI per feature over the recent window; None until it holds ``min_transactions``."""
        if self.drift is None or self.drift.filled < min(min_transactions, self.drift.size):
            return None
        with self.lock:
            return self.drift.psi()

    def terminal_risk(self, terminal_id: str, at_ms: int) -> dict[str, float]:
        """Terminal window counts and fraud rates as a transaction at ``at_ms`` would see them."""
        times, running = self.features.state.terminal_histories([terminal_id])[terminal_id]
        windows = terminal_windows(times, running, at_ms, self.cfg)
        return {
            f"risk_{w}d": float(features.fraud_rate(np.array(frauds), np.array(count)))
            for w, (count, frauds) in windows.items()
        }

    def health(self) -> dict[str, Any]:
        meta = self.bundle.metadata
        problem = self.check_state()
        try:
            sizes = self.features.state.stats()
        except StateUnavailable:
            sizes = {}
        state = self.features.state
        return {
            "status": "ok" if problem is None else "degraded",
            "state_store": {
                "backend": "redis" if isinstance(state, RedisFeatureState) else "memory",
                "ok": problem is None,
                "problem": problem,
                "rewarmed": self.rewarms,
            },
            "model": {
                "name": meta.get("mlflow_model_name"),
                "version": self.model_version,
                "alias": meta.get("mlflow_alias"),
                "run_id": meta.get("mlflow_run_id"),
                "threshold": self.threshold,
                "feature_set_version": self.bundle.info.get("feature_set_version"),
                "compiled": self.bundle.compiled is not None,
            },
            "feature_state": {**sizes, "warmed_from_history": self.warmed},
            "drift_window": {
                "size": self.drift.size if self.drift else 0,
                "filled": self.drift.filled if self.drift else 0,
            },
            "uptime_seconds": round(time.time() - self.started, 3),
            "process": os.getpid(),  # which worker answered (FRAUD_WORKERS > 1)
        }


def _logged_records(rows: pd.DataFrame) -> list[TxRecord]:
    """Rows of the decision store as transaction records (SQLite gives naive datetimes: the
    store holds UTC)."""
    times = [
        int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000) for t in rows["tx_time"]
    ]
    return [
        TxRecord(str(tx), str(c), str(term), t, int(a), ch, m)
        for tx, c, term, t, a, ch, m in zip(
            rows["transaction_id"], rows["customer_id"], rows["terminal_id"], times,
            rows["amount_cents"], rows["channel"], rows["merchant_category"], strict=True,
        )
    ]  # fmt: skip
