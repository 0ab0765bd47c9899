"""The scorer: the served model over the online feature state, framework-free (``service.py``
wraps it in BentoML; tests and other front ends call it in process). Scores batches, takes
labels, swaps the model while serving, and runs a live challenger beside it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from serving.challenger import CANARY, Challenged, Challenger
from serving.model_bundle import ModelBundle, feature_config
from serving.online_features import OnlineFeatures, TxRecord, new_state, terminal_windows
from serving.state import FeatureState, LabelUpdate, StateUnavailable
from serving.warmup import Warmup
from training.core import drift, features

log = logging.getLogger("bentoml.fraud_service.state")
TOPICS = ("model", "challenger", "rules")  # what workers sharing Redis tell each other


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
        workers = self.features.state.coordination  # announced before this process: not ours
        self._generations_at_start = {topic: workers.generation(topic) for topic in TOPICS}
        self.warmup = Warmup(self)
        self.challenger: Challenger | None = None  # a live challenger (shadow or canary)
        # Degraded scoring: the same features over an empty state (no history at all).
        self.stateless = OnlineFeatures(
            new_state(self.cfg), self.cfg, bool(bundle.info.get("categorical"))
        )
        self._install(bundle)

    def _install(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
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
        try:
            return self.features.state.coordination.announce(topic, value)
        except StateUnavailable as exc:
            log.warning("could not tell the other workers (%s %s): %s", topic, value, exc)
            return 0

    def announced(self, topic: str) -> tuple[int, str] | None:
        """What another worker announced on ``topic`` since this process started (generation,
        value); None without a shared state."""
        workers = self.features.state.coordination
        return workers.announced(topic, after=self._generations_at_start[topic])

    def announced_model(self) -> str | None:
        """The version a hot swap in another worker switched to (shared state only)."""
        said = self.announced("model")
        return said[1] if said else None

    @property
    def model_version(self) -> str:
        return self.bundle.version

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    @property
    def columns(self) -> list[str]:
        return self.bundle.columns

    def warm(self) -> int:
        """Materialise the state from the history shipped with the model (and the decision
        log since): :class:`serving.warmup.Warmup`."""
        return self.warmup.warm()

    def check_state(self) -> str | None:
        """What is wrong with the state store now (None: nothing); see :meth:`Warmup.check`."""
        return self.warmup.check()

    def score(self, batch: Sequence[TxRecord], record: bool = True) -> Scored:
        """Fraud probabilities, decisions and the model version that produced them (read under
        the same lock: a hot swap never mislabels a batch); records the transactions unless
        ``record`` is off."""
        if not batch:
            return Scored(np.zeros(0), np.zeros(0, dtype=bool), self.model_version)
        self.warmup.raise_if_rewarming()
        with self.lock:
            cols = self.features.compute_columns(batch, record, decided_later=True)
            t_model = time.perf_counter()
            proba = self.bundle.predict_proba(cols)
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
        self.warmup.raise_if_rewarming()
        with self.lock:
            cols = self.features.compute_columns(batch, record=False)
            before = self.features.state.answered(batch)
            bundle = self.bundle
        if before:
            raise AlreadyScored([batch[i].transaction_id for i in sorted(before)])
        proba = bundle.predict_proba(cols)
        return Scored(proba, proba >= bundle.threshold, bundle.version, columns=cols), bundle

    def score_without_state(self, batch: Sequence[TxRecord]) -> Scored:
        """Degraded scoring while the state store is unavailable: the features computed with
        no history (as for a first-time customer at a new terminal); nothing is recorded."""
        bundle = self.bundle
        cols = self.stateless.compute_columns(batch, record=False)
        proba = bundle.predict_proba(cols)
        return Scored(proba, proba >= bundle.threshold, bundle.version, columns=cols)

    def feedback(
        self,
        labels: dict[str, int],
        records: Sequence[TxRecord] = (),
        record_labels: Sequence[int] = (),
    ) -> LabelUpdate:
        """Apply labels by id and ingest labelled records never seen; unknown ids and the
        confusion counts of the decisions the labels resolve."""
        self.warmup.raise_if_rewarming()
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
        return {
            "status": "ok" if problem is None else "degraded",
            "state_store": {
                "backend": self.features.state.backend,
                "ok": problem is None,
                "problem": problem,
                "rewarmed": self.warmup.rewarms,
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
            "feature_state": {**sizes, "warmed_from_history": self.warmup.warmed},
            "drift_window": {
                "size": self.drift.size if self.drift else 0,
                "filled": self.drift.filled if self.drift else 0,
            },
            "uptime_seconds": round(time.time() - self.started, 3),
            "process": os.getpid(),  # which worker answered (FRAUD_WORKERS > 1)
        }
