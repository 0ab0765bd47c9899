"""The training window's weighted sample: every fraud, and a share of each day's genuine
transactions, weighted so that each day's genuine weight equals its genuine count (the
Horvitz-Thompson weights of a sample stratified by day).

Which rows the sample keeps is a pure function of the transaction id and the seed
(:func:`uniform`), so the local pass and every Spark executor keep the same rows, and a rerun
keeps them again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from training.core import schema

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(ids: Any, seed: int = 0) -> np.ndarray:
    """A draw in [0, 1) per transaction id, the same for the same id and seed anywhere (ids
    are compared as the strings :func:`training.core.schema.normalize_id` makes of them)."""
    text = pd.Series(np.asarray(ids)).astype(str).str.strip().to_numpy(dtype=object)
    hashed = pd.util.hash_array(text, categorize=False)
    with np.errstate(over="ignore"):
        mixed = _mix(hashed + np.uint64(seed + 1) * _GOLDEN)
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def keep(labels: Any, ids: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """The rows a sample keeps: every fraud, and a genuine row when its draw is under
    ``fraction``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the genuine sample's fraction must be in (0, 1], got {fraction}")
    fraud = np.asarray(labels) == 1
    if fraction >= 1:
        return np.ones(len(fraud), dtype=bool)
    return fraud | (uniform(ids, seed) < fraction)


def day_weights(genuine: Mapping[Any, int], kept: Mapping[Any, int]) -> dict[Any, float]:
    """The weight of a kept genuine row, per day: the day's genuine count over its kept ones."""
    return {day: (n / kept[day] if kept.get(day) else 0.0) for day, n in genuine.items()}


def row_weights(labels: Any, days: Any, weights: Mapping[Any, float]) -> np.ndarray:
    """A kept row's weight: 1 for a fraud, its day's genuine weight otherwise."""
    fraud = np.asarray(labels) == 1
    genuine = pd.Series(np.asarray(days)).map(weights).to_numpy(dtype=float)
    return np.where(fraud, 1.0, genuine)


def genuine_per_day(labels: Any, days: Any) -> dict[Any, int]:
    """Genuine transactions a day."""
    genuine = np.asarray(labels) != 1
    counts = pd.Series(np.asarray(days)[genuine]).value_counts()
    return {k: int(v) for k, v in counts.items()}


def sample(
    raw: pd.DataFrame, feats: pd.DataFrame, fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(raw, features, weights) of the sample of a local window (row order kept)."""
    labels = raw[schema.TX_FRAUD].to_numpy()
    days = raw[schema.TX_DATETIME].dt.normalize().to_numpy()
    mask = keep(labels, raw[schema.TRANSACTION_ID].to_numpy(), fraction, seed)
    weights = day_weights(genuine_per_day(labels, days), genuine_per_day(labels[mask], days[mask]))
    w = row_weights(labels[mask], days[mask], weights)
    return (
        raw[mask].reset_index(drop=True),
        feats[mask].reset_index(drop=True),
        w,
    )
