"""Training data from what the service saw: the decision log joined with the labels, under an
explicit label policy, as a raw transaction frame the usual feature definitions take.

Label policy: a decision's label is its latest label event; a transaction with no label
``label_delay_days`` after it happened counts as genuine (chargebacks and fraud reports arrive
within that delay); a younger unlabelled one is left out (its outcome is not known yet)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from training import decision_store, schema


@dataclass(frozen=True)
class LoggedWindow:
    """The raw frame for training, and what the policy did."""

    raw: pd.DataFrame  # schema columns, TX_FRAUD set by the policy, time order
    logged_features: pd.DataFrame  # the vectors the model scored, by transaction id
    since: datetime
    until: datetime
    labelled: int  # with a label event
    assumed_genuine: int  # no label after the delay
    left_out: int  # no label yet, younger than the delay


def as_utc(ts: Any) -> datetime:
    """A time as an aware datetime; naive ones are taken as UTC (as the store keeps them)."""
    t = pd.Timestamp(ts).to_pydatetime()
    return t if t.tzinfo else t.replace(tzinfo=UTC)


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
    engine = decision_store.engine_for(url)
    try:
        with engine.connect() as conn:
            rows = decision_store.decisions_with_labels(conn, since, until)
    finally:
        engine.dispose()
    if rows.empty:
        raise ValueError(f"no decisions logged since {since:%Y-%m-%d %H:%M} in the store")
    times = pd.to_datetime(rows["tx_time"], utc=True)
    clock = as_utc(now) if now else times.max().to_pydatetime()
    matured = times <= pd.Timestamp(clock - timedelta(days=label_delay_days))
    labelled = rows["label"].notna()
    keep = labelled | matured
    fraud = rows["label"].where(labelled, False).astype(bool).astype("int8")
    raw = pd.DataFrame(
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
    )[keep.to_numpy()]
    logged = pd.DataFrame(
        [f if isinstance(f, dict) else json.loads(f or "{}") for f in rows["features"][keep]],
        index=rows["transaction_id"][keep].to_numpy(),
    )
    return LoggedWindow(
        raw=schema.normalize(raw.reset_index(drop=True)),
        logged_features=logged,
        since=since,
        until=until or times.max().to_pydatetime(),
        labelled=int(labelled.sum()),
        assumed_genuine=int((~labelled & matured).sum()),
        left_out=int((~keep).sum()),
    )


def feature_parity(window: LoggedWindow, raw: pd.DataFrame) -> dict[str, float]:
    """Largest |offline - logged| per feature over the window's transactions whose logged
    vector has it: the one feature definition, checked on production data. ``raw`` is a
    normalised frame holding the window and the history before it (for the windows to fill).
    Customer features must agree exactly; the terminal risk features may not where labels
    reached the service at other times than the offline pass assumes (its fixed delay)."""
    from training import features

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
