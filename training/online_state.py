"""Online feature state: the recent events the online features need, behind a small interface.

The in-memory implementation is the embedded default; a Redis one will implement the same
:class:`FeatureState`. Memory is bounded: events older than the longest window (customers) or
the label delay plus the longest window (terminals) behind the newest event are expired.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

UNKNOWN_LABEL = -1
NOT_SCORED = -1  # decision of an event this process did not score (warm-up, ingested records)


class Event(NamedTuple):
    """One transaction as the state keeps it (a NamedTuple: cheap to build per transaction)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    time_ms: int
    amount_cents: int
    label: int = UNKNOWN_LABEL
    decision: int = NOT_SCORED  # 1 flagged, 0 passed when scored here


@dataclass
class LabelUpdate:
    """What a batch of labels did: unknown ids, and for labels new to a transaction this
    process scored, the confusion counts of its decision (live precision and recall)."""

    unknown: list[str] = field(default_factory=list)
    confusion: dict[str, int] = field(default_factory=lambda: {"tp": 0, "fp": 0, "fn": 0, "tn": 0})


class FeatureState(ABC):
    """Storage for online features; histories are returned sorted by time."""

    @abstractmethod
    def customer_histories(
        self, customers: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        """Per customer: (times ms, amounts in cents)."""

    @abstractmethod
    def terminal_histories(
        self, terminals: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        """Per terminal: (times ms, labels: 1 fraud, 0 genuine, -1 unknown)."""

    @abstractmethod
    def append(self, events: Iterable[Event]) -> None:
        """Record transactions (with their label when already known)."""

    @abstractmethod
    def set_labels(self, labels: Mapping[str, int]) -> LabelUpdate:
        """Attach labels by transaction id; returns the unknown ids and the confusion counts."""

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Sizes, for /health and metrics."""


class InMemoryFeatureState(FeatureState):
    """Dict-of-lists state for one process; expires old events as time advances."""

    def __init__(
        self, customer_retention_ms: int, terminal_retention_ms: int, sweep_every: int = 50_000
    ) -> None:
        self.customer_retention_ms = customer_retention_ms
        self.terminal_retention_ms = terminal_retention_ms
        self.sweep_every = sweep_every
        self.watermark_ms = -(2**62)
        self._cust: dict[str, tuple[list[int], list[int]]] = {}
        # terminal -> (times, transaction ids, labels, decisions), parallel lists sorted by time
        self._term: dict[str, tuple[list[int], list[str], list[int], list[int]]] = {}
        self._tx: dict[str, tuple[str, int]] = {}  # id -> (terminal, time)
        self._since_sweep = 0

    def customer_histories(
        self, customers: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        empty: tuple[list[int], list[int]] = ([], [])
        return {c: self._cust.get(c, empty) for c in customers}

    def terminal_histories(
        self, terminals: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        out: dict[str, tuple[list[int], list[int]]] = {}
        for term in terminals:
            entry = self._term.get(term)
            out[term] = (entry[0], entry[2]) if entry else ([], [])
        return out

    def append(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.transaction_id in self._tx:
                if ev.label != UNKNOWN_LABEL:
                    self.set_labels({ev.transaction_id: ev.label})
                continue
            times, cents = self._cust.setdefault(ev.customer_id, ([], []))
            _insert(times, ev.time_ms, (cents, ev.amount_cents))
            ttimes, ids, labels, decisions = self._term.setdefault(ev.terminal_id, ([], [], [], []))
            _insert(
                ttimes,
                ev.time_ms,
                (ids, ev.transaction_id),
                (labels, ev.label),
                (decisions, ev.decision),
            )
            self._tx[ev.transaction_id] = (ev.terminal_id, ev.time_ms)
            if ev.time_ms > self.watermark_ms:
                self.watermark_ms = ev.time_ms
            self._since_sweep += 1
        if self._since_sweep >= self.sweep_every:
            self.expire()

    def set_labels(self, labels: Mapping[str, int]) -> LabelUpdate:
        update = LabelUpdate()
        confusion = update.confusion
        for tx_id, label in labels.items():
            entry = self._tx.get(tx_id)
            if entry is None:
                update.unknown.append(tx_id)
                continue
            times, ids, labs, decisions = self._term[entry[0]]
            k = bisect.bisect_left(times, entry[1])
            while ids[k] != tx_id:  # same-time neighbours: a short scan
                k += 1
            label = int(label)
            if labs[k] == UNKNOWN_LABEL and decisions[k] != NOT_SCORED:  # count each once
                confusion[_OUTCOME[decisions[k], label]] += 1
            labs[k] = label
        return update

    def expire(self) -> None:
        """Drop events that can no longer fall in any window."""
        self._since_sweep = 0
        cust_cut = self.watermark_ms - self.customer_retention_ms
        for key in list(self._cust):
            times, cents = self._cust[key]
            k = bisect.bisect_right(times, cust_cut)
            if k == len(times):
                del self._cust[key]
            elif k:
                del times[:k], cents[:k]
        term_cut = self.watermark_ms - self.terminal_retention_ms
        for key in list(self._term):
            times, ids, labs, decisions = self._term[key]
            k = bisect.bisect_right(times, term_cut)
            for tx_id in ids[:k]:
                self._tx.pop(tx_id, None)
            if k == len(times):
                del self._term[key]
            elif k:
                del times[:k], ids[:k], labs[:k], decisions[:k]

    def stats(self) -> dict[str, int]:
        return {
            "customers": len(self._cust),
            "terminals": len(self._term),
            "transactions": len(self._tx),
            "customer_events": sum(len(v[0]) for v in self._cust.values()),
        }


_OUTCOME = {(1, 1): "tp", (1, 0): "fp", (0, 1): "fn", (0, 0): "tn"}


def _insert(times: list[int], time_ms: int, *columns: tuple[list, object]) -> None:
    """Insert keeping ``times`` and its parallel columns sorted (events mostly arrive in order)."""
    if not times or times[-1] <= time_ms:
        times.append(time_ms)
        for col, value in columns:
            col.append(value)
    else:
        k = bisect.bisect_right(times, time_ms)
        times.insert(k, time_ms)
        for col, value in columns:
            col.insert(k, value)
