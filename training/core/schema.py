"""The transaction record: raw column names and lenient normalisation of user data."""

from __future__ import annotations

from typing import Any

import pandas as pd

TRANSACTION_ID = "TRANSACTION_ID"
TX_DATETIME = "TX_DATETIME"
CUSTOMER_ID = "CUSTOMER_ID"
TERMINAL_ID = "TERMINAL_ID"
TX_AMOUNT = "TX_AMOUNT"
TX_TIME_SECONDS = "TX_TIME_SECONDS"
TX_TIME_DAYS = "TX_TIME_DAYS"
TX_FRAUD = "TX_FRAUD"
TX_FRAUD_SCENARIO = "TX_FRAUD_SCENARIO"
TX_CHANNEL = "TX_CHANNEL"
MERCHANT_CATEGORY = "MERCHANT_CATEGORY"

REQUIRED_COLUMNS = (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT)
LABEL_COLUMNS = (TX_FRAUD,)
CATEGORICAL_COLUMNS = (TX_CHANNEL, MERCHANT_CATEGORY)
CHANNELS = ("card_present", "card_not_present")
UNKNOWN = "unknown"


class SchemaError(ValueError):
    """Raised when data does not follow the transaction layout; the message names the column."""


def normalize_id(series: pd.Series) -> pd.Series:
    """Ids as strings; integral floats (``12.0`` from CSV) become ``"12"``."""
    if pd.api.types.is_float_dtype(series):
        if series.isna().any():
            raise SchemaError(f"column {series.name} has missing values")
        if (series % 1 == 0).all():
            series = series.astype("int64")
    if series.isna().any():
        raise SchemaError(f"column {series.name} has missing values")
    return series.astype(str).str.strip()


def to_naive_utc(series: pd.Series) -> pd.Series:
    """Parse timestamps leniently; timezone-aware ones are converted to UTC and made naive."""
    name = series.name
    try:
        parsed = pd.to_datetime(series, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"column {name} has unparseable timestamps: {exc}") from exc
    if parsed.isna().any():
        raise SchemaError(f"column {name} has missing timestamps")
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def normalize(df: pd.DataFrame, *, require_labels: bool = True) -> pd.DataFrame:
    """Validate and coerce a raw transaction frame; returns it in stream (time) order."""
    needed = REQUIRED_COLUMNS + (LABEL_COLUMNS if require_labels else ())
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(
            f"missing required column(s): {', '.join(missing)}; "
            f"expected at least {', '.join(needed)}"
        )
    out = df.copy()
    for col in (TRANSACTION_ID, CUSTOMER_ID, TERMINAL_ID):
        out[col] = normalize_id(out[col])
    out[TX_DATETIME] = to_naive_utc(out[TX_DATETIME])
    amount = pd.to_numeric(out[TX_AMOUNT], errors="coerce")
    if amount.isna().any():
        raise SchemaError(f"column {TX_AMOUNT} has missing or non-numeric values")
    if (amount < 0).any():
        raise SchemaError(f"column {TX_AMOUNT} has negative values")
    out[TX_AMOUNT] = amount.astype("float64")
    if TX_FRAUD in out.columns:
        fraud = pd.to_numeric(out[TX_FRAUD], errors="coerce")
        if fraud.isna().any() or not fraud.isin([0, 1]).all():
            raise SchemaError(f"column {TX_FRAUD} must hold 0 or 1")
        out[TX_FRAUD] = fraud.astype("int8")
    for col in CATEGORICAL_COLUMNS:
        if col in out.columns:
            out[col] = out[col].fillna(UNKNOWN).astype(str)
    if TX_FRAUD_SCENARIO in out.columns:
        out[TX_FRAUD_SCENARIO] = (
            pd.to_numeric(out[TX_FRAUD_SCENARIO], errors="coerce").fillna(0).astype("int8")
        )
    out = out.sort_values(TX_DATETIME, kind="stable").reset_index(drop=True)
    return out


def request_bodies(df: pd.DataFrame, id_prefix: str = "") -> list[dict[str, Any]]:
    """Raw transactions (handbook layout) as `/predict` transaction objects, for replays,
    load tests and benchmarks."""
    has_cats = TX_CHANNEL in df.columns and MERCHANT_CATEGORY in df.columns
    out = []
    for row in df.itertuples(index=False):
        tx: dict[str, Any] = {
            "transaction_id": f"{id_prefix}{getattr(row, TRANSACTION_ID)}",
            "tx_datetime": getattr(row, TX_DATETIME).isoformat(),
            "customer_id": str(getattr(row, CUSTOMER_ID)),
            "terminal_id": str(getattr(row, TERMINAL_ID)),
            "tx_amount": float(getattr(row, TX_AMOUNT)),
        }
        if has_cats:
            tx["tx_channel"] = getattr(row, TX_CHANNEL)
            tx["merchant_category"] = getattr(row, MERCHANT_CATEGORY)
        out.append(tx)
    return out
