"""Online feature state: the recent events the online features need, behind a small interface.

The in-memory implementation is the embedded default (one process); :mod:`serving.redis_state`
implements the same :class:`FeatureState` in Redis, shared by several workers or replicas.
Memory is bounded: events older than the longest window (customers) or
the label delay plus the longest window (terminals) behind the newest event are expired.

Histories carry running totals beside their sorted times (``cum[i]`` is the total of the
first ``i`` events, ``len(cum) == len(times) + 1``): a window's sum is ``cum[hi] - cum[lo]``,
two list reads instead of a slice summed per transaction on the scoring path.
"""

from __future__ import annotations

import bisect
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from serving.coordination import Coordination
from training.core import schema

UNKNOWN_LABEL = -1
NOT_SCORED = -1  # decision of an event this process did not score (warm-up, ingested records)


class TxRecord(NamedTuple):
    """A normalised transaction as the online path sees it (a NamedTuple: built per
    transaction on the hot path, ~3x cheaper than a frozen dataclass)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    time_ms: int
    amount_cents: int
    channel: str = schema.UNKNOWN
    merchant_category: str = schema.UNKNOWN


History = tuple[list[int], list[int]]  # (sorted times ms, running totals: len(times) + 1)
Answer = tuple[float, int, str]  # a scored transaction's probability, decision, model version


class Event(NamedTuple):
    """One transaction as the state keeps it (a NamedTuple: cheap to build per transaction)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    time_ms: int
    amount_cents: int
    label: int = UNKNOWN_LABEL
    decision: int = NOT_SCORED  # 1 flagged, 0 passed when scored here


class StateUnavailable(RuntimeError):
    """The state store cannot be used now (unreachable, or re-warming after it came back
    empty): the service answers 503 or a flagged degraded score, never a 500."""


@dataclass
class LabelUpdate:
    """What a batch of labels did: unknown ids, and for labels new to a transaction this
    process scored, the confusion counts of its decision (live precision and recall)."""

    unknown: list[str] = field(default_factory=list)
    confusion: dict[str, int] = field(default_factory=lambda: {"tp": 0, "fp": 0, "fn": 0, "tn": 0})


class FeatureState(ABC):
    """Storage for online features; histories are returned sorted by time.

    Scoring reads a batch's histories with :meth:`histories` and, once the decisions are
    taken, records the batch with :meth:`decide`. A state shared between processes records the
    batch inside :meth:`histories` already (atomically with the read, so concurrent workers see
    each other's transactions as in some serial order) and only attaches the decisions later.
    """

    backend = "memory"
    atomic = False  # True: every call is atomic in the store, no lock needed around it
    # what workers sharing this state tell each other (alone in a process: nothing)
    coordination: Coordination = Coordination()

    def ping(self) -> None:
        """StateUnavailable unless the store answers now (probes); in process, it always does."""
        return None

    def bulk_calls(self) -> contextlib.AbstractContextManager[None]:
        """Long timeouts meanwhile (a replay of the decision log); in process, nothing to do."""
        return contextlib.nullcontext()

    def histories(
        self, batch: Sequence[TxRecord], record: bool
    ) -> tuple[dict[str, History], dict[str, History]]:
        """The histories of the batch's customers and terminals as they were before the batch.
        With ``record`` the batch is to be recorded; :meth:`decide` must follow."""
        return (
            self.customer_histories(list({r.customer_id for r in batch})),
            self.terminal_histories(list({r.terminal_id for r in batch})),
        )

    @abstractmethod
    def decide(
        self,
        batch: Sequence[TxRecord],
        decisions: Sequence[int],
        answers: Sequence[float] | None = None,
        version: str = "",
    ) -> None:
        """Record a batch read with ``histories(batch, record=True)`` and its decisions; with
        ``answers`` (probabilities) and ``version``, keep each transaction's first answer."""

    @abstractmethod
    def answered(self, batch: Sequence[TxRecord]) -> dict[int, Answer]:
        """The first answers of the batch's transactions scored before, by position: a re-sent
        transaction gets the same answer (call after :meth:`histories`)."""

    @abstractmethod
    def customer_histories(self, customers: Sequence[str]) -> dict[str, History]:
        """Per customer: (times ms, running total of the amounts in cents)."""

    @abstractmethod
    def terminal_histories(self, terminals: Sequence[str]) -> dict[str, History]:
        """Per terminal: (times ms, running count of known frauds)."""

    @abstractmethod
    def append(self, events: Iterable[Event]) -> None:
        """Record transactions (with their label when already known)."""

    def load(self, events: Iterable[Event]) -> None:
        """Bulk :meth:`append` (warm-up from history): may take long."""
        self.append(events)

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
        self._cust: dict[str, tuple[list[int], list[int]]] = {}  # (times, running cents)
        # terminal -> (times, running frauds, transaction ids, labels, decisions), sorted by time
        self._term: dict[str, tuple[list[int], list[int], list[str], list[int], list[int]]] = {}
        self._tx: dict[str, tuple[str, int]] = {}  # id -> (terminal, time)
        self._answers: dict[str, Answer] = {}  # id -> first answer
        self._since_sweep = 0

    def customer_histories(
        self, customers: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        empty: tuple[list[int], list[int]] = ([], [0])
        return {c: self._cust.get(c, empty) for c in customers}

    def terminal_histories(
        self, terminals: Sequence[str]
    ) -> dict[str, tuple[list[int], list[int]]]:
        out: dict[str, tuple[list[int], list[int]]] = {}
        empty: tuple[list[int], list[int]] = ([], [0])
        for term in terminals:
            entry = self._term.get(term)
            out[term] = (entry[0], entry[1]) if entry else empty
        return out

    def append(self, events: Iterable[Event]) -> None:
        self._add(events)  # an Event is a row of the shape _add takes

    def answered(self, batch: Sequence[TxRecord]) -> dict[int, Answer]:
        known = self._answers
        if not known:
            return {}
        return {
            i: known[r.transaction_id] for i, r in enumerate(batch) if r.transaction_id in known
        }

    def decide(
        self,
        batch: Sequence[TxRecord],
        decisions: Sequence[int],
        answers: Sequence[float] | None = None,
        version: str = "",
    ) -> None:
        """Record a scored batch (plain tuples: no Event per transaction on the hot path)."""
        if answers is not None:
            keep = self._answers.setdefault
            for r, d, p in zip(batch, decisions, answers, strict=True):
                keep(r.transaction_id, (p, d, version))
        self._add(
            (
                r.transaction_id,
                r.customer_id,
                r.terminal_id,
                r.time_ms,
                r.amount_cents,
                UNKNOWN_LABEL,
                d,
            )
            for r, d in zip(batch, decisions, strict=True)
        )

    def _add(self, rows: Iterable[tuple[str, str, str, int, int, int, int]]) -> None:
        """Record (id, customer, terminal, time ms, cents, label, decision) rows."""
        cust, term, known = self._cust, self._term, self._tx
        for tx_id, customer, terminal, t, cents, label, decision in rows:
            if tx_id in known:
                if label != UNKNOWN_LABEL:
                    self.set_labels({tx_id: label})
                continue
            entry = cust.get(customer)
            if entry is None:
                entry = cust[customer] = ([], [0])
            times, cum = entry
            if not times or times[-1] <= t:  # the usual case: events arrive in time order
                times.append(t)
                cum.append(cum[-1] + cents)
            else:
                insert_sorted(times, cum, t, cents, ())
            tentry = term.get(terminal)
            if tentry is None:
                tentry = term[terminal] = ([], [0], [], [], [])
            ttimes, frauds, ids, labels, decisions = tentry
            fraud = 1 if label == 1 else 0
            if not ttimes or ttimes[-1] <= t:
                ttimes.append(t)
                frauds.append(frauds[-1] + fraud)
                ids.append(tx_id)
                labels.append(label)
                decisions.append(decision)
            else:
                insert_sorted(
                    ttimes, frauds, t, fraud, ((ids, tx_id), (labels, label), (decisions, decision))
                )
            known[tx_id] = (terminal, t)
            if t > self.watermark_ms:
                self.watermark_ms = t
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
            times, frauds, ids, labs, decisions = self._term[entry[0]]
            k = bisect.bisect_left(times, entry[1])
            while ids[k] != tx_id:  # same-time neighbours: a short scan
                k += 1
            label = int(label)
            if labs[k] == UNKNOWN_LABEL and decisions[k] != NOT_SCORED:  # count each once
                confusion[_OUTCOME[decisions[k], label]] += 1
            delta = (label == 1) - (labs[k] == 1)
            if delta:  # a fraud label set or withdrawn: shift the running count after it
                for j in range(k + 1, len(frauds)):
                    frauds[j] += delta
            labs[k] = label
        return update

    def expire(self) -> None:
        """Drop events that can no longer fall in any window."""
        self._since_sweep = 0
        cust_cut = self.watermark_ms - self.customer_retention_ms
        for key in list(self._cust):
            times, cum = self._cust[key]
            k = bisect.bisect_right(times, cust_cut)
            if k == len(times):
                del self._cust[key]
            elif k:  # running totals stay valid: window sums are differences
                del times[:k], cum[:k]
        term_cut = self.watermark_ms - self.terminal_retention_ms
        for key in list(self._term):
            times, frauds, ids, labs, decisions = self._term[key]
            k = bisect.bisect_right(times, term_cut)
            for tx_id in ids[:k]:
                self._tx.pop(tx_id, None)
                self._answers.pop(tx_id, None)
            if k == len(times):
                del self._term[key]
            elif k:
                del times[:k], frauds[:k], ids[:k], labs[:k], decisions[:k]

    def stats(self) -> dict[str, int]:
        return {
            "customers": len(self._cust),
            "terminals": len(self._term),
            "transactions": len(self._tx),
            "customer_events": sum(len(v[0]) for v in self._cust.values()),
        }


_OUTCOME = {(1, 1): "tp", (1, 0): "fp", (0, 1): "fn", (0, 0): "tn"}


def insert_sorted(
    times: list[int],
    cum: list[int],
    time_ms: int,
    value: int,
    columns: Iterable[tuple[list, object]],
) -> None:
    """Insert an event by time (after any equal times), keeping the running totals ``cum``
    and the parallel columns in step."""
    k = bisect.bisect_right(times, time_ms)
    times.insert(k, time_ms)
    cum.insert(k + 1, cum[k] + value)
    if value:
        for j in range(k + 2, len(cum)):
            cum[j] += value
    for col, item in columns:
        col.insert(k, item)
