"""Feature definitions, shared by offline training and online serving.

Both paths reduce a transaction to the same *aggregates* (window counts and sums per customer,
delayed window counts and frauds per terminal, gap to the customer's previous transaction) and
then call :func:`assemble`, the single place where features are computed from aggregates.
Times are integer milliseconds; amounts are integer cents, so window sums are exact.

Windows: customer windows are ``(t - w, t]`` and include the current transaction; terminal
windows are ``(t - delay - w, t - delay]``: only transactions old enough for their label to be
known (the label delay) count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.core import schema

FEATURE_SET_VERSION = "3"
# Functions of the clock, not of the data: a window of minutes is all-night or all-weekend by
# construction, so live drift monitoring leaves them out (reports over whole weeks keep them).
CALENDAR_FEATURES = ("TX_DURING_WEEKEND", "TX_DURING_NIGHT")
MS_PER_DAY = 86_400_000
CATEGORICAL_FEATURES = (schema.MERCHANT_CATEGORY,)


@dataclass(frozen=True)
class FeatureConfig:
    """Window lengths (days) and the label delay (days)."""

    windows: tuple[int, ...] = (1, 7, 30)
    delay_days: int = 7
    gap_cap_days: int = 30
    extras: bool = True
    # the customer's large transactions: earlier ones in the past ``large_days`` whose amount
    # exceeds ``large_factor`` times the customer's 30-day average as of now
    large_days: int = 14
    large_factor: int = 3

    @property
    def max_window_ms(self) -> int:
        return max(self.windows) * MS_PER_DAY

    @property
    def delay_ms(self) -> int:
        return self.delay_days * MS_PER_DAY

    @property
    def customer_retention_ms(self) -> int:
        """How long customer events matter: the longest window, the gap cap, the large
        transactions' window."""
        return max(self.max_window_ms, (max(self.gap_cap_days, self.large_days)) * MS_PER_DAY)

    @property
    def terminal_retention_ms(self) -> int:
        return self.delay_ms + self.max_window_ms


@dataclass
class Aggregates:
    """Raw window aggregates for a batch of n transactions: 1-D arrays of n, and per-window
    blocks of shape (len(cfg.windows), n), one row per window in the configured order (so the
    feature definitions run once over all windows: a batch of one is a few dozen numpy calls,
    not one per window and feature)."""

    time_ms: np.ndarray
    amount_cents: np.ndarray
    cust_count: np.ndarray
    cust_cents: np.ndarray
    term_count: np.ndarray
    term_frauds: np.ndarray
    gap_ms: np.ndarray  # -1 when the customer has no earlier transaction
    cust_large: np.ndarray  # the customer's large transactions (see FeatureConfig.large_days)


def to_ms(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Naive UTC timestamps to integer epoch milliseconds."""
    return np.asarray(pd.DatetimeIndex(ts).as_unit("ms").asi8, dtype=np.int64)


def to_cents(amount: np.ndarray | pd.Series | list[float]) -> np.ndarray:
    return np.rint(np.asarray(amount, dtype=np.float64) * 100).astype(np.int64)


def feature_names(cfg: FeatureConfig, categorical: bool) -> list[str]:
    """Model input columns, in order. Categorical columns only when the data has them."""
    names = ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for w in cfg.windows:
        names += [f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"]
    for w in cfg.windows:
        names += [f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW"]
    if cfg.extras:
        names += ["AMOUNT_TO_CUSTOMER_AVG_30DAY", "SECONDS_SINCE_PREVIOUS_TX", large_name(cfg)]
    if categorical:
        names += ["TX_CARD_NOT_PRESENT", *CATEGORICAL_FEATURES]
    return names


def large_name(cfg: FeatureConfig) -> str:
    return f"CUSTOMER_NB_LARGE_TX_{cfg.large_days}DAY"


def assemble(
    agg: Aggregates,
    cfg: FeatureConfig,
    categoricals: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The model's input frame (see :func:`feature_columns`)."""
    return pd.DataFrame(feature_columns(agg, cfg, categoricals))


def feature_columns(
    agg: Aggregates,
    cfg: FeatureConfig,
    categoricals: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """THE feature definitions: aggregates (+ raw categoricals) to named feature columns."""
    days = agg.time_ms // MS_PER_DAY
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    hour = (agg.time_ms - days * MS_PER_DAY) // 3_600_000
    out: dict[str, np.ndarray] = {
        "TX_AMOUNT": agg.amount_cents / 100.0,
        "TX_DURING_WEEKEND": (weekday >= 5).astype(np.float64),
        "TX_DURING_NIGHT": (hour <= 6).astype(np.float64),
    }
    count = agg.cust_count  # all windows at once: one row per window
    cust_nb = count.astype(np.float64)
    cust_avg = np.where(count > 0, agg.cust_cents / np.maximum(count, 1) / 100.0, 0.0)
    for i, w in enumerate(cfg.windows):
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = cust_nb[i]
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = cust_avg[i]
    term_nb = agg.term_count.astype(np.float64)
    risk = fraud_rate(agg.term_frauds, agg.term_count)
    for i, w in enumerate(cfg.windows):
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = term_nb[i]
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = risk[i]
    if cfg.extras:
        i30 = cfg.windows.index(30)
        avg30 = agg.cust_cents[i30] / np.maximum(agg.cust_count[i30], 1)
        out["AMOUNT_TO_CUSTOMER_AVG_30DAY"] = agg.amount_cents / np.maximum(avg30, 1.0)
        cap = cfg.gap_cap_days * MS_PER_DAY
        gap = np.where((agg.gap_ms < 0) | (agg.gap_ms > cap), cap, agg.gap_ms)
        out["SECONDS_SINCE_PREVIOUS_TX"] = gap / 1000.0
        out[large_name(cfg)] = agg.cust_large.astype(np.float64)
    if categoricals:
        channel = np.asarray(categoricals.get(schema.TX_CHANNEL, []), dtype=object)
        out["TX_CARD_NOT_PRESENT"] = (channel == schema.CHANNELS[1]).astype(np.float64)
        for col in CATEGORICAL_FEATURES:
            out[col] = np.asarray(categoricals[col], dtype=object).astype(str)
    return out


def fraud_rate(frauds: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Terminal risk: known frauds over transactions in the window; 0 for an empty window."""
    return np.where(count > 0, frauds / np.maximum(count, 1), 0.0)


def has_categoricals(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in schema.CATEGORICAL_COLUMNS)


def _group_codes(values: pd.Series) -> np.ndarray:
    codes, _ = pd.factorize(values)
    return codes.astype(np.int64)


def offline_aggregates(df: pd.DataFrame, cfg: FeatureConfig) -> Aggregates:
    """Point-in-time aggregates over a whole history (``df`` in stream order, labels present):
    the customer side, then the terminal side. Each side reads only its entity's own
    transactions, so a distributed pass runs the same two functions per group
    (:mod:`training.spark.features`)."""
    agg = empty_aggregates(to_ms(df[schema.TX_DATETIME]), to_cents(df[schema.TX_AMOUNT]), cfg)
    if len(df):
        customer_windows(agg, _group_codes(df[schema.CUSTOMER_ID]), cfg)
        terminal_windows(
            agg, _group_codes(df[schema.TERMINAL_ID]), df[schema.TX_FRAUD].to_numpy(), cfg
        )
    return agg


def empty_aggregates(
    time_ms: np.ndarray, amount_cents: np.ndarray, cfg: FeatureConfig
) -> Aggregates:
    """Aggregates of n transactions with every window still empty."""
    n = len(time_ms)
    block = (len(cfg.windows), n)
    return Aggregates(
        time_ms=time_ms,
        amount_cents=amount_cents,
        cust_count=np.zeros(block, dtype=np.int64),
        cust_cents=np.zeros(block, dtype=np.int64),
        term_count=np.zeros(block, dtype=np.int64),
        term_frauds=np.zeros(block, dtype=np.int64),
        gap_ms=np.zeros(n, dtype=np.int64),
        cust_large=np.zeros(n, dtype=np.int64),
    )


def _span(t0: np.ndarray, cfg: FeatureConfig) -> int:
    """A key stride past any window's reach: entity * span + time never meets a neighbour."""
    return int(t0.max()) + cfg.terminal_retention_ms + cfg.customer_retention_ms + 1


def customer_windows(agg: Aggregates, cust: np.ndarray, cfg: FeatureConfig) -> None:
    """The customer side of ``agg``, in place: window counts and sums, the gap to the previous
    transaction, the large transactions. Rows in stream order, ``cust`` integer codes.

    Sort once by (customer, time, stream position) and find every window's start with a binary
    search on a composite key; window sums are differences of cumulative sums."""
    t, cents = agg.time_ms, agg.amount_cents
    n = len(t)
    t0 = t - t.min()
    order = np.lexsort((np.arange(n), t0, cust))
    key = cust[order] * _span(t0, cfg) + t0[order]
    csum = np.concatenate([[0], np.cumsum(cents[order])])
    idx = np.arange(n)
    for i, w in enumerate(cfg.windows):
        left = np.searchsorted(key, key - w * MS_PER_DAY, side="right")
        agg.cust_count[i, order] = idx - left + 1
        agg.cust_cents[i, order] = csum[idx + 1] - csum[left]
    same = np.zeros(n, dtype=bool)
    same[1:] = cust[order][1:] == cust[order][:-1]
    gap_sorted = np.full(n, -1, dtype=np.int64)
    gap_sorted[1:] = np.where(same[1:], t0[order][1:] - t0[order][:-1], -1)
    agg.gap_ms[order] = gap_sorted
    if cfg.extras:
        i30 = cfg.windows.index(30)
        agg.cust_large[order] = _large_counts(
            cust[order], t0[order], cents[order],
            agg.cust_count[i30, order], agg.cust_cents[i30, order], cfg,
        )  # fmt: skip


def terminal_windows(
    agg: Aggregates, term: np.ndarray, fraud: np.ndarray, cfg: FeatureConfig
) -> None:
    """The terminal side of ``agg``, in place: transactions and known frauds in each window
    shifted by the label delay. Rows in stream order, ``term`` integer codes."""
    t = agg.time_ms
    n = len(t)
    t0 = t - t.min()
    fraud = np.asarray(fraud, dtype=np.int64)
    order = np.lexsort((np.arange(n), t0, term))
    key = term[order] * _span(t0, cfg) + t0[order]
    fsum = np.concatenate([[0], np.cumsum(fraud[order])])
    hi = np.searchsorted(key, key - cfg.delay_ms, side="right")
    for i, w in enumerate(cfg.windows):
        lo = np.searchsorted(key, key - cfg.delay_ms - w * MS_PER_DAY, side="right")
        agg.term_count[i, order] = hi - lo
        agg.term_frauds[i, order] = fsum[hi] - fsum[lo]


def _large_counts(
    cust: np.ndarray,
    t: np.ndarray,
    cents: np.ndarray,
    count30: np.ndarray,
    cents30: np.ndarray,
    cfg: FeatureConfig,
) -> np.ndarray:
    """In customer-time order: per transaction, the customer's earlier transactions in
    ``(t - large_days, t]`` whose amount exceeds ``large_factor`` times its 30-day average as
    of now (integers: ``amount * count30 > factor * cents30``). One pass per offset back, as
    many as the busiest customer's transactions in the window."""
    n = len(t)
    out = np.zeros(n, dtype=np.int64)
    span = cfg.large_days * MS_PER_DAY
    bar = cfg.large_factor * cents30
    j = 1
    while j < n:
        same = (cust[j:] == cust[:-j]) & (t[j:] - t[:-j] < span)
        if not same.any():
            break
        out[j:] += same & (cents[:-j] * count30[j:] > bar[j:])
        j += 1
    return out


def offline_features(df: pd.DataFrame, cfg: FeatureConfig | None = None) -> pd.DataFrame:
    """Features for every transaction of a normalised history, point-in-time correct."""
    cfg = cfg or FeatureConfig()
    agg = offline_aggregates(df, cfg)
    cats = (
        {c: df[c].to_numpy() for c in schema.CATEGORICAL_COLUMNS} if has_categoricals(df) else None
    )
    feats = assemble(agg, cfg, cats)
    feats.index = df.index
    return feats
