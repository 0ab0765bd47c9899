"""The decision rules in one worker: the rule set in force and the managed lists, read from the
decision store (:mod:`training.core.rule_store`), applied to each scored batch.

The worker reads them at start, again every ``refresh_s`` in a thread of its own (a change
made with ``fraudops rules apply`` or ``fraudops lists`` reaches every worker and replica
within that), and at once when told (the admin endpoints, or another worker's announcement).
A store that cannot be read, or a set that reads a field this model does not compute, keeps
the rules last read and says so in :meth:`status`: the service goes on deciding with them
rather than failing its answers. Without a decision store (``FRAUD_DECISION_LOG=false``) the
default set applies, with empty lists.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from training.core import rules

log = logging.getLogger("bentoml.fraud_service")


@dataclass(frozen=True)
class Loaded:
    """What one read of the store gave: applied together, so a batch never sees a set from
    one read and lists from another."""

    ruleset: rules.RuleSet
    lists: Mapping[str, frozenset[str]]
    names: list[str]
    at: datetime


@dataclass(frozen=True)
class Decided:
    """A batch's actions (rules.ACTIONS codes), the rule that decided each (None: none did),
    and the set's version."""

    action: np.ndarray
    rule: list[str | None]
    version: str

    def actions(self) -> list[str]:
        return [rules.ACTIONS[a] for a in self.action.tolist()]


def transaction_columns(records: Sequence[Any], needed: Iterable[str]) -> dict[str, np.ndarray]:
    """The rules' transaction fields a plan reads, from the batch's records
    (serving.state.TxRecord): the names and units of the API (``tx_amount`` in currency)."""
    take = {
        "customer_id": lambda r: r.customer_id,
        "terminal_id": lambda r: r.terminal_id,
        "tx_amount": lambda r: r.amount_cents / 100,
        "tx_channel": lambda r: r.channel,
        "merchant_category": lambda r: r.merchant_category,
    }
    return {
        k: np.array([take[k](r) for r in records], dtype=float if k == "tx_amount" else object)
        for k in needed
        if k in take
    }


class DecisionRules:
    """The rules a worker applies; :meth:`decide` on every scored batch. ``known``: the
    features the served model computes (a set reading another field is not taken)."""

    def __init__(
        self, store_url: str | None, refresh_s: float = 10.0, known: Iterable[str] = ()
    ) -> None:
        self.url = store_url
        self.refresh_s = refresh_s
        self.known = set(known)
        self.error: str | None = None
        self.due = 0.0
        self.lock = threading.Lock()  # one read at a time (the poller, an admin call)
        self.wake = threading.Event()
        self.stopped = threading.Event()
        default = rules.default()
        self.loaded = Loaded(default, {}, rules.names(default), datetime.now(UTC))
        self.refresh(force=True)

    def read(self) -> Loaded:
        """The set in force and the lists, from the store (the default set if none applied).
        Any database error propagates; RuleSetError: the set reads a field not computed here."""
        from training.core import decision_store, rule_store

        assert self.url is not None
        with decision_store.connect(self.url) as conn:
            ruleset = rule_store.active(conn) or rules.default()
            lists = rule_store.members(conn)
        if self.known:
            ruleset.check_fields(self.known)
        return Loaded(ruleset, lists, rules.names(ruleset), datetime.now(UTC))

    def refresh(self, force: bool = False) -> bool:
        """Read the store again when due (or ``force``); True when the set or a list changed.
        A failed read keeps what was read last and records why."""
        now = time.monotonic()
        if self.url is None or not (force or now >= self.due):
            return False
        with self.lock:
            self.due = now + self.refresh_s
            try:
                fresh = self.read()
            except Exception as exc:  # the store down, a set for another model: keep the last
                if self.error is None:
                    log.warning("decision rules not refreshed, keeping %s: %s", self.version, exc)
                self.error = f"{type(exc).__name__}: {exc}"
                return False
            self.error = None
            old = self.loaded
            changed = fresh.ruleset != old.ruleset or fresh.lists != old.lists
            if changed:
                log.info("decision rules %s in force (%d rules)", fresh.ruleset.version,
                         len(fresh.names))  # fmt: skip
                self.loaded = fresh
            return changed

    def start(self) -> None:
        """Refresh every ``refresh_s`` (or when :meth:`poke`d) in a daemon thread: the store's
        reads stay off the request path."""
        if self.url is None:
            return
        self.thread = threading.Thread(target=self._poll, name="decision-rules", daemon=True)
        self.thread.start()
        # A daemon thread inside SQLite or psycopg while the interpreter finalises can crash
        # it: stopped (and waited for) first.
        atexit.register(self.stop)

    def _poll(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self.refresh_s)
            self.wake.clear()
            if not self.stopped.is_set():
                self.refresh(force=True)

    def poke(self) -> None:
        """Read the store again soon, in the thread (another worker changed the rules)."""
        self.wake.set()

    def stop(self) -> None:
        """End the refreshing thread, waiting for a read in progress (5 s at most)."""
        self.stopped.set()
        self.wake.set()
        thread = getattr(self, "thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    @property
    def version(self) -> str:
        return self.loaded.ruleset.version

    def decide(
        self,
        columns: Mapping[str, Any],
        score: np.ndarray,
        threshold: float | np.ndarray,
        loaded: Loaded | None = None,
    ) -> Decided:
        """Each transaction's action and the rule that decided it."""
        loaded = loaded or self.loaded  # one read's set and lists for the whole batch
        action, fired = rules.evaluate(loaded.ruleset, columns, score, threshold, loaded.lists)
        names = loaded.names
        return Decided(
            action,
            [names[i] if i != rules.NO_RULE else None for i in fired.tolist()],
            loaded.ruleset.version,
        )

    def decide_batch(
        self,
        records: Sequence[Any],
        features: Mapping[str, Any] | None,
        score: np.ndarray,
        threshold: float | np.ndarray,
    ) -> Decided:
        """:meth:`decide` on a scored batch: its records' fields and the features it was
        scored on (None: a batch scored without them reads NaN, which no comparison holds)."""
        loaded = self.loaded
        needed = loaded.ruleset.plan().needed
        columns: dict[str, Any] = transaction_columns(records, needed)
        for name in needed:
            if name not in columns:
                columns[name] = (
                    features[name] if features is not None else np.full(len(score), np.nan)
                )
        return self.decide(columns, score, threshold, loaded)

    def apply(self, ruleset: rules.RuleSet, by: str | None) -> bool:
        """Put ``ruleset`` in force in the store, then here; False: it already was.
        RuleSetError: it reads a field this model does not compute, or its version was
        applied before with other rules (nothing changes either way)."""
        from training.core import decision_store, rule_store

        if self.url is None:
            raise rules.RuleSetError("no decision store (FRAUD_DECISION_LOG=false): rules stay")
        if self.known:
            ruleset.check_fields(self.known)
        with decision_store.connect(self.url) as conn, conn.begin():
            changed = rule_store.apply(conn, ruleset, by)
        self.refresh(force=True)
        return changed

    def change_list(
        self, name: str, values: list[str], by: str | None, note: str | None, add: bool
    ) -> int:
        """Add ``values`` to the list ``name`` (or remove them), then read the lists again;
        how many entries were added (removed)."""
        from training.core import decision_store, rule_store

        if self.url is None:
            raise rules.RuleSetError("no decision store (FRAUD_DECISION_LOG=false): no lists")
        with decision_store.connect(self.url) as conn, conn.begin():
            n = (
                rule_store.add(conn, name, values, by, note)
                if add
                else rule_store.remove(conn, name, values)
            )
        self.refresh(force=True)
        return n

    def status(self) -> dict[str, Any]:
        """For /health: the version in force, when it was read, list sizes, a read error."""
        loaded = self.loaded
        return {
            "version": loaded.ruleset.version,
            "rules": len(loaded.names),
            "lists": {k: len(v) for k, v in sorted(loaded.lists.items())},
            "read_at": loaded.at.isoformat(),
            "error": self.error,
        }
