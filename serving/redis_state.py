"""The online feature state in Redis: one state shared by several workers or replicas.

Layout (``P`` is the key prefix; every value is packed little-endian int64s, appended with
``APPEND`` so a write never reads or rewrites a history):

- ``P:c:<customer>``  (time ms, amount cents) per transaction
- ``P:t:<terminal>``  time ms per transaction
- ``P:f:<terminal>``  (time ms of the transaction, +1/-1) per fraud label set / withdrawn
- ``P:x:<tx id>``     time ms, decision (int8), label (int8), terminal id: dedup + labels
- ``P:a:<tx id>``     the first answer: probability (float64), decision (int8), model version
- ``P:clock``, ``P:warm:<history>``, ``P:<topic>``: cross-worker coordination
  (:mod:`serving.coordination`)

A scoring batch is one script call (``RECORD``): it reads the histories of the batch's
customers and terminals and appends the batch, atomically, so concurrent workers see each other's
transactions as in some serial order; a second call attaches the decisions (``DECIDE``).
Histories are returned as the in-memory state returns them (sorted times and running totals), so
the feature computation is the same code for both states. Events older than the retention are
trimmed from the front of a history when a batch touches it; keys also carry a wall-clock TTL of
twice the longest retention plus a day, set at creation and renewed at each trim, so customers and
terminals that go quiet disappear.

Faults: the scoring path's calls use a client with short timeouts (``timeout_s``, 50 ms by
default) and no retries; a failed call raises :class:`StateUnavailable` and, for ``RETRY_S``,
every call fails at once without touching Redis (so an unreachable Redis costs one timeout, not
one per batch), then Redis is tried again: recovery needs no restart. Warm-up goes through a
second client with long timeouts. ``P:warm:<history>`` marks a warmed state: a Redis that comes
back empty has lost it, which ``coordination.warmed`` tells.

Single Redis instance (or a primary): the scripts build some key names themselves, which a Redis
Cluster would not route.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from serving.coordination import RedisCoordination
from serving.redis_scripts import DECIDE, LABELS, RECORD
from serving.state import (
    _OUTCOME,
    NOT_SCORED,
    UNKNOWN_LABEL,
    Answer,
    Event,
    FeatureState,
    History,
    LabelUpdate,
    StateUnavailable,
    TxRecord,
)
from training.core.features import MS_PER_DAY

if TYPE_CHECKING:
    import redis

CHUNK = 1_000  # transactions (or labels) per script call when ingesting (warm-up, back-fill)
RETRY_S = 0.5  # after a failed call, calls fail at once for this long, then Redis is tried again
T = TypeVar("T")


class RedisFeatureState(FeatureState):
    """:class:`FeatureState` in Redis; safe to share between processes (its scripts are
    atomic: no lock needed around them)."""

    backend = "redis"
    atomic = True

    def __init__(
        self,
        client: redis.Redis,
        customer_retention_ms: int,
        terminal_retention_ms: int,
        prefix: str = "fraud",
        bulk: redis.Redis | None = None,
        where: str = "Redis",
    ) -> None:
        import redis as redis_mod

        self.r = client
        self.bulk = bulk or client  # long timeouts: warm-up, clear
        self.where = where
        self.prefix = prefix
        self.down_until = 0.0  # monotonic time until which calls fail at once
        self.error: str | None = None  # the last failure, while it lasts
        self._faults = (redis_mod.RedisError, OSError)
        self.customer_retention_ms = customer_retention_ms
        self.terminal_retention_ms = terminal_retention_ms
        # Wall-clock TTL of a history: set at creation, renewed at each trim. A key in use is
        # trimmed at least once a retention, so twice the retention never drops a live event.
        self.ttl_s = (2 * max(customer_retention_ms, terminal_retention_ms) + MS_PER_DAY) // 1000
        self._c, self._t = f"{prefix}:c:", f"{prefix}:t:"
        self._f, self._x = f"{prefix}:f:", f"{prefix}:x:"
        self._a = f"{prefix}:a:"
        self._answered: tuple[Sequence[TxRecord], dict[int, Answer]] | None = None
        self._record = client.register_script(RECORD)
        self._decide = client.register_script(DECIDE)
        self._labels = client.register_script(LABELS)
        self.coordination = RedisCoordination(self)  # what the workers tell each other

    @classmethod
    def from_url(
        cls,
        url: str,
        customer_retention_ms: int,
        terminal_retention_ms: int,
        prefix: str,
        timeout_s: float = 0.05,
    ) -> RedisFeatureState:
        """Connected and checked (a start-up without Redis fails, naming it)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        fast = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        bulk = redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=5)
        try:
            bulk.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"feature state: cannot reach Redis at {url}: {exc}") from exc
        where = f"Redis at {url.rsplit('@', 1)[-1]}"  # never the password of a URL
        return cls(fast, customer_retention_ms, terminal_retention_ms, prefix, bulk, where)

    @contextlib.contextmanager
    def bulk_calls(self) -> Iterator[None]:
        """Every call on the long-timeout client meanwhile (a replay of the decision log: big
        batches while no request is scored)."""
        fast, self.r = self.r, self.bulk
        try:
            yield
        finally:
            self.r = fast

    # -- faults -------------------------------------------------------------------------------

    def guard(self, call: Callable[[], T]) -> T:
        """Run a Redis call; StateUnavailable when it fails or failed less than RETRY_S ago."""
        if self.down_until and time.monotonic() < self.down_until:
            raise StateUnavailable(self.error or f"{self.where} unreachable")
        try:
            out = call()
        except self._faults as exc:
            self.error = f"{self.where} unreachable: {type(exc).__name__}: {exc}"
            self.down_until = time.monotonic() + RETRY_S
            raise StateUnavailable(self.error) from exc
        if self.down_until:
            self.down_until, self.error = 0.0, None
        return out

    def ping(self) -> None:
        """StateUnavailable unless Redis answers now (probes)."""
        self.guard(self.r.ping)

    # -- scoring path -------------------------------------------------------------------------

    def histories(
        self, batch: Sequence[TxRecord], record: bool
    ) -> tuple[dict[str, History], dict[str, History]]:
        if not record:
            return super().histories(batch, record)
        labels = [UNKNOWN_LABEL] * len(batch)
        customers, terminals, reply = self.guard(
            lambda: self._run_record(batch, labels, read=True, client=self.r)
        )
        nc, nt = len(customers), len(terminals)
        pairs = reply[-1]
        self._answered = (batch, {
            int(pairs[k]) - 1: _answer(pairs[k + 1]) for k in range(0, len(pairs), 2)
        }) if pairs else None  # fmt: skip
        return (
            _customer_histories(customers, reply[:nc]),
            _terminal_histories(terminals, reply[nc : nc + nt], reply[nc + nt : nc + 2 * nt]),
        )

    def answered(self, batch: Sequence[TxRecord]) -> dict[int, Answer]:
        """What the last ``histories(batch, record=True)`` found (the same call, no round trip)."""
        found = self._answered
        self._answered = None
        return found[1] if found is not None and found[0] is batch else {}

    def decide(
        self,
        batch: Sequence[TxRecord],
        decisions: Sequence[int],
        answers: Sequence[float] | None = None,
        version: str = "",
    ) -> None:
        self._set_decisions([r.transaction_id for r in batch], decisions, None, answers, version)

    def _set_decisions(
        self,
        ids: Sequence[str],
        decisions: Sequence[int],
        client: Any = None,
        answers: Sequence[float] | None = None,
        version: str = "",
    ) -> None:
        if ids:
            keys = [self._x + i for i in ids]
            args: list[bytes | str | int] = [
                struct.pack(f"{len(ids)}b", *decisions),
                struct.pack(f"<{len(ids)}d", *answers) if answers is not None else b"",
                version,
                self.ttl_s,
                self._a,
                self._x,
            ]
            self.guard(lambda: self._decide(keys=keys, args=args, client=client or self.r))

    # -- reads ----------------------------------------------------------------------------------

    def customer_histories(self, customers: Sequence[str]) -> dict[str, History]:
        if not customers:
            return {}
        blobs = self.guard(lambda: self.r.mget([self._c + c for c in customers]))
        return _customer_histories(customers, blobs)

    def terminal_histories(self, terminals: Sequence[str]) -> dict[str, History]:
        if not terminals:
            return {}
        keys = [self._t + t for t in terminals] + [self._f + t for t in terminals]
        blobs = self.guard(lambda: self.r.mget(keys))
        n = len(terminals)
        return _terminal_histories(terminals, blobs[:n], blobs[n:])

    # -- writes outside scoring -------------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> None:
        """Record events (labelled records from /feedback): the short-timeout client, a chunk
        of CHUNK a call."""
        for chunk in _chunks(events, CHUNK):
            self._append_chunk(chunk, self.r)

    def load(self, events: Iterable[Event]) -> None:
        """Warm-up: the long-timeout client."""
        for chunk in _chunks(events, CHUNK):
            self._append_chunk(chunk, self.bulk)

    def _append_chunk(self, events: list[Event], client: Any) -> None:
        batch = [
            TxRecord(e.transaction_id, e.customer_id, e.terminal_id, e.time_ms, e.amount_cents)
            for e in events
        ]
        labels = [e.label for e in events]
        flags = self.guard(lambda: self._run_record(batch, labels, read=False, client=client))
        flags = flags[2][-1]
        decided = [e for e in events if e.decision != NOT_SCORED]
        self._set_decisions(
            [e.transaction_id for e in decided], [e.decision for e in decided], client
        )
        # Known transactions that arrive again with a label: set it, as the in-memory state does.
        relabel = {
            e.transaction_id: e.label
            for e, new in zip(events, flags, strict=True)
            if new == ord("0") and e.label != UNKNOWN_LABEL
        }
        if relabel:
            self.set_labels(relabel)

    def _run_record(
        self, batch: Sequence[TxRecord], labels: Sequence[int], read: bool, client: Any
    ) -> tuple[list[str], list[str], list[Any]]:
        """Run ``RECORD``: the batch's distinct customers and terminals, and the reply."""
        n = len(batch)
        customers = list(dict.fromkeys(r.customer_id for r in batch))
        terminals = list(dict.fromkeys(r.terminal_id for r in batch))
        if len(customers) > 65_535 or len(terminals) > 65_535:
            raise ValueError("at most 65,535 customers and terminals per batch")
        cpos = {c: i for i, c in enumerate(customers, start=1)}
        tpos = {t: i for i, t in enumerate(terminals, start=1)}
        times = np.fromiter((r.time_ms for r in batch), np.int64, n)
        cents = np.fromiter((r.amount_cents for r in batch), np.int64, n)
        lab = np.asarray(labels, dtype=np.int64)
        idx = np.fromiter(
            (v for r in batch for v in (cpos[r.customer_id], tpos[r.terminal_id])), np.uint16, 2 * n
        )
        crec = np.column_stack([times, cents]).astype("<i8")
        xval = np.zeros(n, dtype=[("t", "<i8"), ("d", "i1"), ("l", "i1")])
        xval["t"], xval["d"], xval["l"] = times, NOT_SCORED, lab
        frec = np.column_stack([times, (lab == 1).astype(np.int64)]).astype("<i8")
        # Trim what no window of this batch can reach: behind its oldest transaction.
        oldest = int(times.min())
        keys = (
            [self._c + c for c in customers]
            + [self._t + t for t in terminals]
            + [self._f + t for t in terminals]
            + [self._x + r.transaction_id for r in batch]
        )
        args = [
            len(customers),
            len(terminals),
            n,
            self.ttl_s,
            oldest - self.customer_retention_ms,
            oldest - self.terminal_retention_ms,
            1 if read else 0,
            idx.astype("<u2").tobytes(),
            crec.tobytes(),
            times.astype("<i8").tobytes(),
            xval.tobytes(),
            frec.tobytes(),
            self._t,
            self._a,
            self._x,
        ]
        return customers, terminals, list(self._record(keys=keys, args=args, client=client))

    def set_labels(self, labels: Mapping[str, int]) -> LabelUpdate:
        update = LabelUpdate()
        ids = list(labels)
        for start in range(0, len(ids), CHUNK):
            self._set_label_chunk(ids[start : start + CHUNK], labels, update)
        return update

    def _set_label_chunk(
        self, ids: list[str], labels: Mapping[str, int], update: LabelUpdate
    ) -> None:
        values = [int(labels[i]) for i in ids]
        keys = [self._x + i for i in ids]
        args: list[bytes | str | int] = [struct.pack(f"{len(ids)}b", *values), self._f, self.ttl_s]
        reply = self.guard(lambda: self._labels(keys=keys, args=args, client=self.r))
        confusion = update.confusion
        for k, (tx_id, label) in enumerate(zip(ids, values, strict=True)):
            found, decision, previous = struct.unpack_from("bbb", reply, 3 * k)
            if not found:
                update.unknown.append(tx_id)
            elif previous == UNKNOWN_LABEL and decision != NOT_SCORED:  # count each once
                confusion[_OUTCOME[decision, label]] += 1

    def stats(self) -> dict[str, int]:
        """Keys in the Redis database (histories, transactions; shared by every worker)."""
        return {"redis_keys": int(self.guard(self.r.dbsize))}

    def clear(self) -> int:
        """Delete every key under this state's prefix (tests, a re-warm from scratch)."""
        deleted = 0
        for keys in _chunks(self.bulk.scan_iter(match=f"{self.prefix}:*", count=1_000), 1_000):
            deleted += self.bulk.unlink(*keys)
        return deleted


def _answer(value: bytes) -> Answer:
    """A stored first answer: float64 probability, int8 decision, then the model version."""
    proba, decision = struct.unpack_from("<db", value)
    return proba, decision, value[9:].decode()


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _records(blobs: Sequence[Any], width: int) -> tuple[np.ndarray, list[int]]:
    """All blobs as one (records, width) int64 array, plus each blob's start row (and the end)."""
    starts = [0]
    for b in blobs:
        starts.append(starts[-1] + (len(b) if b else 0) // (8 * width))
    joined = b"".join(b for b in blobs if b)
    return np.frombuffer(joined, dtype="<i8").reshape(-1, width), starts


def _sorted_by_key(times: np.ndarray, starts: list[int]) -> np.ndarray | None:
    """An order sorting each key's rows by time (stable), or None when they already are."""
    if len(times) < 2:
        return None
    down = np.flatnonzero(np.diff(times) < 0) + 1
    if not len(down):
        return None
    if not set(down.tolist()) - set(starts):  # only at key boundaries
        return None
    owner = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    return np.lexsort((times, owner))


def _customer_histories(customers: Sequence[str], blobs: Sequence[Any]) -> dict[str, History]:
    rec, starts = _records(blobs, 2)
    order = _sorted_by_key(rec[:, 0], starts)
    if order is not None:
        rec = rec[order]
    times = rec[:, 0].tolist()
    cum = np.zeros(len(rec) + 1, dtype=np.int64)
    np.cumsum(rec[:, 1], out=cum[1:])
    running = cum.tolist()  # differences are all a window needs: one running total for all keys
    return {
        c: (times[starts[i] : starts[i + 1]], running[starts[i] : starts[i + 1] + 1])
        for i, c in enumerate(customers)
    }


def _terminal_histories(
    terminals: Sequence[str], blobs: Sequence[Any], fraud_blobs: Sequence[Any]
) -> dict[str, History]:
    rec, starts = _records(blobs, 1)
    t = rec[:, 0]
    order = _sorted_by_key(t, starts)
    if order is not None:
        t = t[order]
    times = t.tolist()
    out: dict[str, History] = {}
    for i, term in enumerate(terminals):
        s, e = starts[i], starts[i + 1]
        fb = fraud_blobs[i]
        if not fb:
            frauds = [0] * (e - s + 1)
        else:  # running known frauds: label changes at or before each event's time
            f = np.frombuffer(fb, dtype="<i8").reshape(-1, 2)
            f = f[np.argsort(f[:, 0], kind="stable")]
            running = np.concatenate(([0], np.cumsum(f[:, 1])))
            own = t[s:e]
            at = np.searchsorted(f[:, 0], own, side="right")
            frauds = [int(running[np.searchsorted(f[:, 0], own[0], "left")])] if e > s else [0]
            frauds += running[at].tolist()
        out[term] = (times[s:e], frauds)
    return out
