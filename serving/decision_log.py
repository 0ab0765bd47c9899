"""Every decision and label durable before its answer: this worker's journal on local disk
(:mod:`serving.journal`, group commit), shipped into the decision store by the shipper process
beside the workers (:mod:`serving.shipper`, idempotent), so the database can be down without
losing or holding up anything, and the workers spend no CPU on it. The lines are the decision
store's rows (:mod:`training.core.decision_store`): one definition, the table."""

from __future__ import annotations

import atexit
import itertools
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from serving.journal import Journal, worker_name
from serving.shipper import Shipper, backlog, last_delivered, redacted
from training.core import decision_store
from training.core.decision_store import FEEDBACK, SCORED

log = logging.getLogger("bentoml.fraud_service.decision_log")
SHIP_WAIT_S = 10.0  # an on-demand delivery waits this long for a folder the shipper holds


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class DecisionLog:
    """The service's side: journal lines for a scored batch or a set of labels, durable
    before the answer; figures for /health and /metrics read from the journals' disk (so a
    stopped shipper shows). The shipper here delivers only on demand (a replay at start, a
    decision just answered) unless ``ship_in_workers`` runs it in a thread."""

    def __init__(
        self, root: Path, url: str, feature_names: list[str], ship_in_workers: bool = False
    ) -> None:
        self.worker = worker_name()
        self.root = root
        self.journal = Journal(root, self.worker)
        self.shipper = Shipper(root, url, migrate=True)
        self.feature_names = feature_names
        self.label_seq = itertools.count(1)  # event ids; next() is atomic under the GIL
        self.started = time.time()
        if ship_in_workers:
            self.shipper.start()
            # A daemon thread inside SQLite or psycopg while the interpreter finalises can
            # crash it: stop shipping first (the journal keeps whatever is left).
            atexit.register(self.shipper.close)

    def decision_lines(
        self,
        records: list[Any],
        keys: list[str | None],
        proba: list[float],
        flagged: list[bool],
        versions: list[str],
        columns: dict[str, Any] | None,
        model_name: str,
        threshold: float,
        degraded: bool,
        challenged: Any = None,
        decided: Any = None,
    ) -> list[bytes]:
        """One journal line for the scored batch, by column: the fields the batch shares once,
        the others (the feature vectors the model scored, by name) as lists. orjson writes the
        floats exactly; a batch line costs ~1 µs a decision against ~3 µs for a line each
        (docs/performance.md): the encoding is on the request path."""
        cols = _transaction_columns(records)
        cols.update(model_version=versions, probability=proba, is_fraud=flagged, api_key=keys)
        if challenged is not None:  # a live challenger took part in the batch
            cols.update(
                arm=challenged.arms,
                threshold=challenged.thresholds,
                shadow_version=challenged.other_versions,
                shadow_probability=challenged.other_proba,
                shadow_is_fraud=challenged.other_flagged,
            )
        features = (
            {n: columns[n].tolist() for n in self.feature_names} if columns is not None else None
        )
        same = _common(self.worker, SCORED, model_name, threshold, degraded)
        if decided is not None:  # serving.decision_rules.Decided: the actions answered
            cols.update(action=decided.actions(), rule=decided.rule)
            same["rule_set_version"] = decided.version
        return [_batch_line(same, cols, features)]

    def feedback_record_lines(
        self, records: list[Any], key: str | None, model_name: str, version: str
    ) -> list[bytes]:
        """The transactions sent to /feedback as full records (never scored here: no score or
        decision; their labels are label events beside them), as one batch line."""
        same = _common(self.worker, FEEDBACK, model_name, None, False)
        same.update(model_version=version, api_key=key)
        return [_batch_line(same, _transaction_columns(records), None)]

    def label_lines(self, labels: dict[str, int], key: str | None) -> list[bytes]:
        now = int(time.time() * 1000)
        lines = []
        for tx, fraud in labels.items():
            event = {
                "k": "l",
                "event_id": f"{self.worker}:{next(self.label_seq)}",
                "transaction_id": tx,
                "is_fraud": bool(fraud),
                "labelled_at": now,
                "api_key": key,
            }
            lines.append(orjson.dumps(event) + b"\n")
        return lines

    def logged_since(self, since_ms: int) -> Any:
        """The store's decisions after ``since_ms`` with their latest labels (a DataFrame),
        after delivering what journals of stopped workers still hold: what a starting worker
        replays into its state. Raises when the store is unreachable."""
        from training.core import decision_store

        try:
            self.shipper.ship_once(wait_s=SHIP_WAIT_S)
        except Exception as exc:
            log.warning("journals not delivered before the replay: %s", exc)
            raise
        with self.shipper.engine.connect() as conn:
            return decision_store.decisions_with_labels(conn, _utc(since_ms + 1))

    def logged_decision(self, transaction_id: str) -> dict[str, Any] | None:
        """One transaction's row in the store (None: not there); a miss delivers this
        worker's journal first and looks again (a decision answered a moment ago)."""
        from training.core import decision_store

        for attempt in range(2):
            with self.shipper.engine.connect() as conn:
                row = decision_store.decision(conn, transaction_id)
            if row is not None or attempt:
                return row
            self.shipper.ship_once(wait_s=SHIP_WAIT_S)
        return None

    def record_sync(self, lines: list[bytes]) -> None:
        """Append and wait for the fsync, from a thread (/feedback's). A scored batch only
        appends (``journal.write``): its answers wait in serving.durable_answers."""
        self.journal.write_durably(lines)

    def backlog_bytes(self) -> int:
        """Journal bytes of every worker not in the store yet (from the disk)."""
        return backlog(self.root)

    def delivery_age_s(self) -> float:
        """Seconds since a shipper last reached the store (since this worker started when
        none has since)."""
        at = last_delivered(self.root)
        return time.time() - max(at or 0.0, self.started)

    def health(self) -> dict[str, Any]:
        age = self.delivery_age_s()
        return {
            "ok": self.journal.error is None and age < 60,
            "store": redacted(self.shipper.url),
            "backlog_bytes": self.backlog_bytes(),
            "last_delivered_s_ago": round(age, 1),
            "journal_error": str(self.journal.error) if self.journal.error else None,
        }

    def close(self) -> None:
        """Stop shipping, deliver what is left if the store answers (it stays on disk for the
        shipper otherwise), close the journal."""
        self.shipper.close()
        try:
            self.shipper.ship_once(wait_s=SHIP_WAIT_S)
        except Exception as exc:
            log.warning("decision journal left for the shipper: %s", exc)
        self.journal.close()
        self.shipper.engine.dispose()


def _common(
    worker: str, kind: str, model_name: str, threshold: float | None, degraded: bool
) -> dict[str, Any]:
    """The fields every decision line of one batch shares, the others empty."""
    return {
        "kind": kind, "features": None, "model_name": model_name, "model_version": None,
        "probability": None, "threshold": threshold, "is_fraud": None, "degraded": degraded,
        "api_key": None, "worker": worker, "received_at": int(time.time() * 1000),
        "arm": None, "shadow_version": None, "shadow_probability": None,
        "shadow_is_fraud": None, "action": None, "rule": None, "rule_set_version": None,
    }  # fmt: skip


def _transaction_columns(records: list[Any]) -> dict[str, list[Any]]:
    """A batch's transaction fields by column, from its records."""
    return {
        "transaction_id": [r.transaction_id for r in records],
        "time_ms": [r.time_ms for r in records],
        "customer_id": [r.customer_id for r in records],
        "terminal_id": [r.terminal_id for r in records],
        "amount_cents": [r.amount_cents for r in records],
        "channel": [r.channel for r in records],
        "merchant_category": [r.merchant_category for r in records],
    }


def _batch_line(
    same: dict[str, Any], cols: dict[str, list[Any]], features: dict[str, list[Any]] | None
) -> bytes:
    """A batch line (``"k": "b"``): ``same`` holds what every decision of the batch shares,
    ``cols`` a list per other field, ``features`` a list per feature (or null). Its fields are
    checked against the table (a programming error, not bad input: it must never reach the
    journal)."""
    for name in cols:
        same.pop(name, None)
    problem = decision_store.journal_fields_problem([*same, *cols, "features"])
    if problem is not None:
        raise RuntimeError(problem)
    line = {"k": "b", "same": same, "cols": cols, "features": features}
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
