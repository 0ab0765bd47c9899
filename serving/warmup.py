"""Warm-up of the online state: from the history shipped with the model, then the decision log
since that history (the state a worker that never stopped would have); and the re-warm when a
shared store comes back empty. The first worker on a shared store warms it for all
(:mod:`serving.coordination`)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Protocol

import pandas as pd

from serving.model_bundle import ModelBundle
from serving.online_features import OnlineFeatures, TxRecord
from serving.state import StateUnavailable
from training.core import schema

log = logging.getLogger("bentoml.fraud_service.state")
REWARMING = "the state store came back empty: warming it again from the model's history"


class Served(Protocol):
    """What a warm-up needs of the scorer it warms: the served model, the online features over
    the state, and the lock a scoring batch holds."""

    bundle: ModelBundle
    features: OnlineFeatures
    lock: threading.Lock


class Warmup:
    """The state's warm-up, log replay and re-warm for one scorer (its model, lock and
    features)."""

    def __init__(self, scorer: Served) -> None:
        self.scorer = scorer
        self.warmed = 0
        self.warm_token: str | None = None  # the warm-up's history (shared store: its marker)
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

    def raise_if_rewarming(self) -> None:
        if self.rewarming:
            raise StateUnavailable(REWARMING)

    def warm(self) -> int:
        """Materialise the state from the history shipped with the model."""
        if self.scorer.bundle.warmup_path is None:
            return 0
        path = self.scorer.bundle.warmup_path
        workers = self.scorer.features.state.coordination  # shared: the first one warms for all
        token = hashlib.sha1(path.read_bytes()).hexdigest()[:16] if workers.shared else "local"
        self.warm_token = token
        done = workers.claim_warmup(token)
        if done is not None:
            self.warmed = done
            return done
        self.warmed = self._warm_from(path)
        self._replay_log()
        workers.warmup_done(token, self.warmed)
        return self.warmed

    def _replay_log(self) -> None:
        """After a fresh warm-up: the logged decisions and labels since the history's end."""
        if self.replay_source is None:
            return
        try:
            t0 = time.perf_counter()
            rows = self.replay_source(self.scorer.bundle.history_end_ms())
            self.replayed = self.replay(rows)
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
        bulk = self.scorer.features.state.bulk_calls()
        # recorded as served: runs of one model version, in batches of at most 1,000
        runs = [
            (version, idx[k : k + 1_000])
            for version, group in itertools.groupby(range(len(records)), key=versions.__getitem__)
            for idx in [list(group)]
            for k in range(0, len(idx), 1_000)
        ]
        with self.scorer.lock, bulk:
            if len(ingested):
                sent_labels = [0 if pd.isna(lab) else int(bool(lab)) for lab in ingested["label"]]
                self.scorer.features.ingest(sent_records, sent_labels)
            for version, idx in runs:
                i, j = idx[0], idx[-1] + 1
                self.scorer.features.compute_columns(records[i:j], True, decided_later=True)
                self.scorer.features.record(records[i:j], flagged[i:j], proba[i:j], version)
            labels = {
                str(tx): int(bool(lab))
                for tx, lab in zip(rows["transaction_id"], rows["label"], strict=True)
                if lab is not None and lab == lab  # not None/NaN
            }
            if labels:
                self.scorer.features.feedback(labels)
        return len(records) + len(sent_records)

    def _warm_from(self, path: Path) -> int:
        history = schema.normalize(pd.read_parquet(path))
        if self.scorer.features.state.atomic:  # a shared store's scripts: no lock needed
            return self.scorer.features.warm(history)
        with self.scorer.lock:
            return self.scorer.features.warm(history)

    def check(self) -> str | None:
        """What is wrong with the state store now (None: nothing). Pings the store; when it
        came back empty, starts warming it again from the model's history in a thread."""
        state = self.scorer.features.state
        if self.rewarming:
            return REWARMING
        try:
            state.ping()
            if self.warm_token is None or state.coordination.warmed(self.warm_token):
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
