"""Online features: the same aggregates as :func:`features.offline_aggregates`, one batch at a time.

Each transaction is recorded in the state as it is scored, so a batch sees its own earlier
transactions, exactly as the offline pass sees earlier rows of the stream.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from serving.state import (
    NOT_SCORED,
    UNKNOWN_LABEL,
    Event,
    FeatureState,
    InMemoryFeatureState,
    LabelUpdate,
    TxRecord,
    insert_sorted,
)
from training.core import features, schema
from training.core.features import MS_PER_DAY, Aggregates, FeatureConfig

__all__ = ["OnlineFeatures", "TxRecord", "new_state", "records_from_frame", "replay"]


def new_state(cfg: FeatureConfig) -> InMemoryFeatureState:
    return InMemoryFeatureState(cfg.customer_retention_ms, cfg.terminal_retention_ms)


class OnlineFeatures:
    """Computes model features for live transactions and keeps the state up to date."""

    def __init__(self, state: FeatureState, cfg: FeatureConfig, categorical: bool) -> None:
        self.state = state
        self.cfg = cfg
        self.categorical = categorical

    def compute(self, batch: Sequence[TxRecord], record: bool = True) -> pd.DataFrame:
        """Features for ``batch`` in order, as a frame; records the transactions in the state."""
        return pd.DataFrame(self.compute_columns(batch, record))

    def compute_columns(
        self, batch: Sequence[TxRecord], record: bool = True, *, decided_later: bool = False
    ) -> dict[str, np.ndarray]:
        """Features for ``batch`` in order, as named arrays (the serving hot path).

        With ``record`` the batch is recorded in the state; with ``decided_later`` too, the
        caller completes that with :meth:`record` and the decisions it took (scoring)."""
        cfg = self.cfg
        n = len(batch)
        cust_hist, term_hist = self.state.histories(batch, record)
        remaining = Counter(r.customer_id for r in batch)
        copied: set[str] = set()
        # Windows nest, so each transaction bisects widest-first inside the previous bounds;
        # window sums are differences of the histories' running totals.
        widest = sorted(cfg.windows, reverse=True)
        spans = [w * MS_PER_DAY for w in widest]
        delay = cfg.delay_ms
        right_of = bisect.bisect_right
        i30 = widest.index(30) if cfg.extras else -1
        large_span, factor = cfg.large_days * MS_PER_DAY, cfg.large_factor
        # One row of ints per transaction: gap, then per window (widest first) customer
        # count and cents, terminal count and frauds; last, the customer's large transactions.
        flat: list[int] = []
        add = flat.extend
        for r in batch:
            t, cid, amount = r.time_ms, r.customer_id, r.amount_cents
            times, cum = cust_hist[cid]
            right = right_of(times, t)
            add((t - times[right - 1] if right else -1,))
            lo, top = 0, cum[right]
            count30 = cents30 = 0
            for w, span in enumerate(spans):
                lo = right_of(times, t - span, lo, right)
                count, cents = right - lo + 1, top - cum[lo] + amount
                add((count, cents))
                if w == i30:
                    count30, cents30 = count, cents
            large = 0
            if i30 >= 0:  # earlier amounts in the window above factor x the 30-day average
                bar = factor * cents30
                start = right_of(times, t - large_span, 0, right)
                for i in range(start, right):
                    if (cum[i + 1] - cum[i]) * count30 > bar:
                        large += 1
            remaining[cid] -= 1
            if remaining[cid]:  # seen again later in this batch: keep it, on a copy
                if cid not in copied:
                    times, cum = list(times), list(cum)
                    cust_hist[cid] = (times, cum)
                    copied.add(cid)
                insert_sorted(times, cum, t, amount, ())
            ttimes, frauds = term_hist[r.terminal_id]
            hi = right_of(ttimes, t - delay)
            lo, top = 0, frauds[hi]
            for span in spans:
                lo = right_of(ttimes, t - delay - span, lo, hi)
                add((hi - lo, top - frauds[lo]))
            add((large,))
        k = len(widest)
        block = np.array(flat, dtype=np.int64).reshape(n, 2 + 4 * k).T
        order = [widest.index(w) for w in cfg.windows]  # back to the configured order
        cust = block[1 : 1 + 2 * k].reshape(k, 2, n)[order]
        term = block[1 + 2 * k : 1 + 4 * k].reshape(k, 2, n)[order]
        agg = Aggregates(
            time_ms=np.fromiter((r.time_ms for r in batch), np.int64, n),
            amount_cents=np.fromiter((r.amount_cents for r in batch), np.int64, n),
            cust_count=cust[:, 0],
            cust_cents=cust[:, 1],
            term_count=term[:, 0],
            term_frauds=term[:, 1],
            gap_ms=block[0],
            cust_large=block[1 + 4 * k],
        )
        cats = None
        if self.categorical:
            cats = {
                schema.TX_CHANNEL: np.array([r.channel for r in batch], dtype=object),
                schema.MERCHANT_CATEGORY: np.array(
                    [r.merchant_category for r in batch], dtype=object
                ),
            }
        if record and not decided_later:
            self.record(batch)
        return features.feature_columns(agg, cfg, cats)

    def record(
        self,
        batch: Sequence[TxRecord],
        decisions: Sequence[int] | None = None,
        answers: Sequence[float] | None = None,
        version: str = "",
    ) -> None:
        """Record a batch whose features were computed with ``record`` on, with the decisions
        taken (for live precision/recall) and the answers given (for a re-sent transaction)."""
        self.state.decide(
            batch,
            decisions if decisions is not None else [NOT_SCORED] * len(batch),
            answers,
            version,
        )

    def feedback(self, labels: dict[str, int]) -> LabelUpdate:
        """Labels for transactions the state knows: unknown ids and confusion counts."""
        return self.state.set_labels(labels)

    def ingest(self, records: Sequence[TxRecord], labels: Sequence[int]) -> None:
        """Transactions never scored here (other channel, replica, back-fill), with labels."""
        self.state.append(
            Event(r.transaction_id, r.customer_id, r.terminal_id, r.time_ms, r.amount_cents, lab)
            for r, lab in zip(records, labels, strict=True)
        )

    def warm(self, history: pd.DataFrame) -> int:
        """Materialise the state from a normalised history (the most recent days)."""
        labels = (
            history[schema.TX_FRAUD].tolist()
            if schema.TX_FRAUD in history.columns
            else [UNKNOWN_LABEL] * len(history)
        )
        self.state.load(
            Event(r.transaction_id, r.customer_id, r.terminal_id, r.time_ms, r.amount_cents, lab)
            for r, lab in zip(records_from_frame(history), labels, strict=True)
        )
        return len(history)


def terminal_windows(
    times: Sequence[int], frauds: Sequence[int], t: int, cfg: FeatureConfig
) -> dict[int, tuple[int, int]]:
    """Per window: (transactions, known frauds) of a terminal in ``(t-delay-w, t-delay]``,
    from its history (times and running fraud count)."""
    hi = bisect.bisect_right(times, t - cfg.delay_ms)
    out = {}
    for w in cfg.windows:
        lo = bisect.bisect_right(times, t - cfg.delay_ms - w * MS_PER_DAY, 0, hi)
        out[w] = (hi - lo, frauds[hi] - frauds[lo])
    return out


def records_from_frame(df: pd.DataFrame) -> list[TxRecord]:
    """Normalised raw frame to online records (for replays and tests)."""
    n = len(df)
    channel = (
        df[schema.TX_CHANNEL].tolist() if schema.TX_CHANNEL in df.columns else [schema.UNKNOWN] * n
    )
    mcc = (
        df[schema.MERCHANT_CATEGORY].tolist()
        if schema.MERCHANT_CATEGORY in df.columns
        else [schema.UNKNOWN] * n
    )
    return [
        TxRecord(tx, c, term, int(t), int(a), ch, m)
        for tx, c, term, t, a, ch, m in zip(
            df[schema.TRANSACTION_ID].tolist(),
            df[schema.CUSTOMER_ID].tolist(),
            df[schema.TERMINAL_ID].tolist(),
            features.to_ms(df[schema.TX_DATETIME]).tolist(),
            features.to_cents(df[schema.TX_AMOUNT]).tolist(),
            channel,
            mcc,
            strict=True,
        )
    ]


def replay(
    records: Sequence[TxRecord],
    labels: Sequence[int],
    online: OnlineFeatures,
    label_delay_ms: int,
    max_batch: int = 500,
) -> pd.DataFrame:
    """Score a time-ordered stream through the online path, delivering each label
    ``label_delay_ms`` after its transaction (before any later transaction is scored).

    Returns the online features, row for row. Used for parity tests and back-tests.
    """
    import heapq

    pending: list[tuple[int, int, str, int]] = []
    frames = []
    i = 0
    while i < len(records):
        now = records[i].time_ms
        due: dict[str, int] = {}
        while pending and pending[0][0] <= now:
            _, _, tx_id, lab = heapq.heappop(pending)
            due[tx_id] = lab
        if due:
            online.feedback(due)
        end = min(i + max_batch, len(records))
        if pending:  # stop the batch before the next label falls due
            next_due = pending[0][0]
            j = i + 1
            while j < end and records[j].time_ms < next_due:
                j += 1
            end = j
        batch = records[i:end]
        frames.append(online.compute(batch))
        for k, r in enumerate(batch, start=i):
            heapq.heappush(pending, (r.time_ms + label_delay_ms, k, r.transaction_id, labels[k]))
        i = end
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
