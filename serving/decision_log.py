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
    ) -> list[bytes]:
        """One journal line per scored transaction (the feature vector the model scored, by
        name). orjson writes the floats exactly and ~15x faster than ``json`` (measured in
        docs/operations.md): the encoding is on the request path."""
        names = self.feature_names if columns is not None else []
        values = [columns[n].tolist() for n in names]  # type: ignore[index]
        common = _common(self.worker, SCORED, model_name, threshold, degraded)
        rows = []
        for i, r in enumerate(records):
            row = _transaction(r)
            row.update(common)
            row["features"] = (
                {n: v[i] for n, v in zip(names, values, strict=True)} if names else None
            )
            row["model_version"] = versions[i]
            row["probability"] = proba[i]
            row["is_fraud"] = flagged[i]
            row["api_key"] = keys[i]
            if challenged is not None:  # a live challenger took part in the batch
                row["arm"] = challenged.arms[i]
                row["threshold"] = challenged.thresholds[i]
                row["shadow_version"] = challenged.other_versions[i]
                row["shadow_probability"] = challenged.other_proba[i]
                row["shadow_is_fraud"] = challenged.other_flagged[i]
            rows.append(row)
        return _lines(rows)

    def feedback_record_lines(
        self, records: list[Any], key: str | None, model_name: str, version: str
    ) -> list[bytes]:
        """One line per labelled transaction sent to /feedback as a full record (never scored
        here: no score or decision; its label is a label event beside it)."""
        common = _common(self.worker, FEEDBACK, model_name, None, False)
        common.update(model_version=version, api_key=key)
        rows = []
        for r in records:
            row = _transaction(r)
            row.update(common)
            rows.append(row)
        return _lines(rows)

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

    async def record(self, lines: list[bytes]) -> None:
        """Durable before the caller answers (OSError when the disk refuses)."""
        await self.journal.durable(self.journal.write(lines))

    def record_sync(self, lines: list[bytes]) -> None:
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
        "shadow_is_fraud": None,
    }  # fmt: skip


def _transaction(r: Any) -> dict[str, Any]:
    """A journal decision's transaction fields, from its record."""
    return {
        "k": "d", "transaction_id": r.transaction_id, "time_ms": r.time_ms,
        "customer_id": r.customer_id, "terminal_id": r.terminal_id,
        "amount_cents": r.amount_cents, "channel": r.channel,
        "merchant_category": r.merchant_category,
    }  # fmt: skip


def _lines(rows: list[dict[str, Any]]) -> list[bytes]:
    """Journal lines of decision rows, whose fields are checked against the table once a
    batch (a programming error, not bad input: it must never reach the journal)."""
    if rows and (problem := decision_store.journal_fields_problem(rows[0])) is not None:
        raise RuntimeError(problem)
    dumps = orjson.dumps
    return [dumps(row) + b"\n" for row in rows]
