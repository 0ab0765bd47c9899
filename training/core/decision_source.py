"""Training data from what the service saw: the decision log joined with the labels, under an
explicit label policy, as a raw transaction frame the usual feature definitions take.

Label policy: a decision's label is its latest label event; a transaction with no label
``label_delay_days`` after it happened counts as genuine (chargebacks and fraud reports arrive
within that delay); a younger unlabelled one is left out (its outcome is not known yet). By
days, as the handbook counts its delay: a day's labels are in once the clock has entered the
day ``label_delay_days`` later."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from training.core import decision_store, schema

# What the service answered, and the other model's score beside it (a live challenger's)
ANSWER_COLUMNS = ("model_version", "probability", "threshold", "is_fraud", "degraded", "arm",
                  "shadow_version", "shadow_probability", "shadow_is_fraud")  # fmt: skip


@dataclass(frozen=True)
class LoggedWindow:
    """The raw frame for training, and what the policy did."""

    raw: pd.DataFrame  # schema columns, TX_FRAUD set by the policy, time order
    logged_features: pd.DataFrame  # the vectors the model scored, by transaction id
    answers: pd.DataFrame  # what the service answered (ANSWER_COLUMNS), by transaction id
    since: datetime
    until: datetime
    labelled: int  # with a label event
    assumed_genuine: int  # no label after the delay
    left_out: int  # no label yet, younger than the delay


def as_utc(ts: Any) -> datetime:
    """A time as an aware datetime; naive ones are taken as UTC (as the store keeps them)."""
    t = pd.Timestamp(ts).to_pydatetime()
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def label_horizon(clock: datetime, label_delay_days: int) -> datetime:
    """Transactions before this time have their labels in at ``clock`` (by whole days)."""
    day = as_utc(clock).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1 - label_delay_days)


def label_policy(
    times: pd.Series, labels: pd.Series, clock: datetime, label_delay_days: int
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """THE label policy, row by row: (kept, TX_FRAUD, labelled) for decisions at ``times``
    (UTC) whose latest label is ``labels`` (None: none yet), at ``clock``. Kept: labelled, or
    unlabelled and older than the label horizon (then genuine); a younger unlabelled one waits.
    The store's path and the lake's on Spark (:mod:`training.spark.lake`) both call it."""
    matured = times < pd.Timestamp(label_horizon(clock, label_delay_days))
    labelled = labels.notna()
    fraud = labels.where(labelled, False).astype(bool).astype("int8")
    return labelled | matured, fraud, labelled


def transactions_of(rows: pd.DataFrame, times: pd.Series, fraud: pd.Series) -> pd.DataFrame:
    """Logged decisions (the store's columns, times in UTC) as raw transactions with their
    policy label: the one mapping from the decision log to the training layout."""
    return pd.DataFrame(
        {
            schema.TRANSACTION_ID: rows["transaction_id"],
            schema.TX_DATETIME: times.dt.tz_localize(None),
            schema.CUSTOMER_ID: rows["customer_id"],
            schema.TERMINAL_ID: rows["terminal_id"],
            schema.TX_AMOUNT: rows["amount_cents"].astype("int64") / 100.0,
            schema.TX_CHANNEL: rows["channel"],
            schema.MERCHANT_CATEGORY: rows["merchant_category"],
            schema.TX_FRAUD: fraud,
        }
    )


def load_window(
    url: str,
    since: datetime,
    until: datetime | None = None,
    label_delay_days: int = 7,
    now: datetime | None = None,
) -> LoggedWindow:
    """Decisions with ``since <= tx_time < until`` from the store at ``url``, labelled by the
    policy (``now``: when the policy is applied, default the latest transaction logged — the
    stream's own clock, so replays of past data behave as live ones)."""
    since, until = as_utc(since), as_utc(until) if until else None
    with decision_store.connect(url) as conn:
        rows = decision_store.decisions_with_labels(conn, since, until)
    if rows.empty:
        raise ValueError(f"no decisions logged since {since:%Y-%m-%d %H:%M} in the store")
    times = pd.to_datetime(rows["tx_time"], utc=True)
    clock = as_utc(now) if now else times.max().to_pydatetime()
    keep, fraud, labelled = label_policy(times, rows["label"], clock, label_delay_days)
    raw = transactions_of(rows, times, fraud)[keep.to_numpy()]
    decided = rows["kind"] == decision_store.SCORED  # not a record sent to /feedback
    scored = keep & decided & ~rows["degraded"].astype(bool)  # degraded: no history
    logged = pd.DataFrame(
        [f if isinstance(f, dict) else json.loads(f or "{}") for f in rows["features"][scored]],
        index=rows["transaction_id"][scored].to_numpy(),
    )
    answered = keep & decided
    answers = rows.loc[answered, [*ANSWER_COLUMNS]]
    return LoggedWindow(
        raw=schema.normalize(raw.reset_index(drop=True)),
        logged_features=logged,
        answers=answers.set_axis(rows["transaction_id"][answered].to_numpy()),
        since=since,
        until=until or times.max().to_pydatetime(),
        labelled=int(labelled.sum()),
        assumed_genuine=int((keep & ~labelled).sum()),
        left_out=int((~keep).sum()),
    )


def feature_parity(
    window: LoggedWindow, raw: pd.DataFrame, offline: pd.DataFrame | None = None
) -> dict[str, float]:
    """Largest |offline - logged| per feature over the window's transactions whose logged
    vector has it: the one feature definition, checked on production data. ``raw`` is a
    normalised frame holding the window and the history before it (for the windows to fill),
    ``offline`` its features when already computed. Customer features must agree exactly; the
    terminal risk features may not where labels reached the service at other times than the
    offline pass assumes (its fixed delay): see :func:`parity_breaks`."""
    from training.core import features

    if offline is None:
        offline = features.offline_features(raw)
    by_id = offline.set_axis(raw[schema.TRANSACTION_ID].to_numpy(), axis=0)
    common = window.logged_features.index.intersection(by_id.index)
    out: dict[str, float] = {}
    for name in window.logged_features.columns:
        if name not in by_id.columns:
            continue
        logged, recomputed = window.logged_features.loc[common, name], by_id.loc[common, name]
        if not len(common):
            out[name] = 0.0
        elif pd.api.types.is_numeric_dtype(recomputed):
            gap = np.abs(logged.astype(float).to_numpy() - recomputed.astype(float).to_numpy())
            out[name] = float(np.nanmax(gap))
        else:  # a category: 1.0 when any differs
            out[name] = float((logged.astype(str) != recomputed.astype(str)).any())
    return out


LABEL_TIMED = "TERMINAL_ID_RISK_"  # features that depend on when labels arrived


def parity_breaks(gaps: dict[str, float], tolerance: float = 1e-6) -> dict[str, float]:
    """The features whose logged and recomputed values differ beyond ``tolerance``, leaving out
    the terminal risk ones (their labels reach the service when the team sends them, not after
    the fixed delay the offline pass assumes): a break means training/serving skew."""
    return {k: v for k, v in gaps.items() if not k.startswith(LABEL_TIMED) and v > tolerance}


def store_clock(url: str, wall: bool) -> datetime:
    """The label policy's "now": the wall clock for live traffic, else the latest logged
    transaction time (the stream's own clock: replays of past data behave as live ones)."""
    if wall:
        return datetime.now(UTC)
    with decision_store.connect(url) as conn:
        latest = decision_store.latest_time(conn)
    if latest is None:
        raise ValueError("no decisions logged in the store yet")
    return as_utc(latest)


@dataclass(frozen=True)
class TrainingWindow:
    """Raw transactions for training from the log (days before it from the files) and what
    the registry records about them."""

    raw: pd.DataFrame
    logged: LoggedWindow
    backfilled: int  # transactions taken from the files, before the first logged one
    tags: dict[str, str]


def training_window(
    url: str,
    files: pd.DataFrame | None,
    days: int,
    label_delay_days: int,
    as_of: datetime,
) -> TrainingWindow:
    """The ``days`` before the label horizon (:func:`label_horizon`): logged decisions,
    all matured (labelled, or genuine by the policy); days before the first logged
    transaction come from ``files`` (a normalised frame) when given, so a young log still
    makes a window the protocol can split. Decisions younger than the horizon wait."""
    as_of = as_utc(as_of)
    horizon = label_horizon(as_of, label_delay_days)
    since = horizon - timedelta(days=days)
    logged = load_window(url, since, horizon, label_delay_days, now=as_of)
    first = logged.raw[schema.TX_DATETIME].min()
    parts = [logged.raw]
    backfilled = 0
    if files is not None and len(files):
        t = files[schema.TX_DATETIME]
        earlier = files[(t >= since.replace(tzinfo=None)) & (t < first)]
        earlier = earlier[~earlier[schema.TRANSACTION_ID].isin(logged.raw[schema.TRANSACTION_ID])]
        backfilled = len(earlier)
        parts.insert(0, earlier)
    raw = schema.normalize(pd.concat(parts, ignore_index=True)) if backfilled else logged.raw
    with decision_store.connect(url) as conn:
        waiting = decision_store.count_since(conn, horizon)
    tags = {
        "data.source": "decision_log",
        "data.as_of": as_of.isoformat(),
        "data.label_delay_days": str(label_delay_days),
        "data.log_first": f"{first:%Y-%m-%d %H:%M:%S}",
        "data.log_until": horizon.isoformat(),
        "data.logged": str(len(logged.raw)),
        "data.labelled": str(logged.labelled),
        "data.assumed_genuine": str(logged.assumed_genuine),
        "data.waiting_for_labels": str(waiting),
        "data.backfilled_from_files": str(backfilled),
    }
    return TrainingWindow(raw, logged, backfilled, tags)
