"""The decision rules in one worker: the rule set in force and the managed lists, read from the
decision store (:mod:`training.core.rule_store`), applied to each scored batch.

The worker reads them at start, again at most every ``refresh_s`` from its upkeep (a change
made with ``fraudops rules apply`` or ``fraudops lists`` reaches every worker and replica
within that), and at once when told (the admin endpoints, or another worker's announcement).
A store that cannot be read keeps the rules last read, and says so in :meth:`status`: the
service goes on deciding with them rather than failing its answers. Without a decision store
(``FRAUD_DECISION_LOG=false``) the default set applies, with empty lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
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


class DecisionRules:
    """The rules a worker applies; :meth:`decide` on every scored batch."""

    def __init__(self, store_url: str | None, refresh_s: float = 10.0) -> None:
        self.url = store_url
        self.refresh_s = refresh_s
        self.error: str | None = None
        self.due = 0.0
        default = rules.default()
        self.loaded = Loaded(default, {}, rules.names(default), datetime.now(UTC))
        self.refresh(force=True)

    def read(self) -> Loaded:
        """The set in force and the lists, from the store (the default set if none applied).
        Any database error propagates."""
        from training.core import decision_store, rule_store

        assert self.url is not None
        with decision_store.connect(self.url) as conn:
            ruleset = rule_store.active(conn) or rules.default()
            lists = rule_store.members(conn)
        return Loaded(ruleset, lists, rules.names(ruleset), datetime.now(UTC))

    def refresh(self, force: bool = False) -> bool:
        """Read the store again when due (or ``force``); True when the set or a list changed.
        A failed read keeps what was read last and records why."""
        now = time.monotonic()
        if self.url is None or not (force or now >= self.due):
            return False
        self.due = now + self.refresh_s
        try:
            fresh = self.read()
        except Exception as exc:  # the store down or unreadable: decide on with the last set
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

    @property
    def version(self) -> str:
        return self.loaded.ruleset.version

    def decide(
        self, columns: Mapping[str, Any], score: np.ndarray, threshold: float | np.ndarray
    ) -> Decided:
        """Each transaction's action and the rule that decided it."""
        loaded = self.loaded  # one read's set and lists for the whole batch
        action, fired = rules.evaluate(loaded.ruleset, columns, score, threshold, loaded.lists)
        names = loaded.names
        return Decided(
            action,
            [names[i] if i != rules.NO_RULE else None for i in fired.tolist()],
            loaded.ruleset.version,
        )

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
