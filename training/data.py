"""Loading transaction data (one file or a folder of per-day files) and time-ordered splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.core import schema

READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".parquet": pd.read_parquet,
    ".csv": pd.read_csv,
    ".gz": pd.read_csv,
    ".pkl": pd.read_pickle,
    ".pickle": pd.read_pickle,
}


class DataError(ValueError):
    """The data path cannot be read as transactions; the message says why."""


def data_files(path: Path) -> list[Path]:
    """The transaction files at ``path`` (a file, or a folder searched recursively)."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READERS)
        if not files:
            raise DataError(
                f"no transaction files in {path} (expected {', '.join(sorted(READERS))})"
            )
    bad = [p for p in files if p.suffix not in READERS]
    if bad:
        raise DataError(f"unsupported file type {bad[0].suffix!r} for {bad[0]}")
    return files


def load_transactions(
    path: Path, *, require_labels: bool = True, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """Read and normalise transactions (handbook raw layout, lenient dtypes), in time order."""
    files = data_files(path)
    frames = []
    for i, f in enumerate(files):
        try:
            frames.append(READERS[f.suffix](f))
        except Exception as exc:
            raise DataError(f"cannot read {f}: {exc}") from exc
        if progress:
            progress(i + 1, len(files))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if df.empty:
        raise DataError(f"{path} holds no transactions")
    return schema.normalize(df, require_labels=require_labels)


def convert_to_parquet(
    path: Path, out: Path, progress: Callable[[int, int], None] | None = None
) -> list[Path]:
    """The transactions at ``path`` (parquet, CSV or pickle; a file or a folder) as one
    normalised parquet file a day under ``out`` (``YYYY-MM-DD.parquet``, what the Spark engine
    reads), a source file at a time. A day found in several source files gets all their rows."""
    from training.demo.simulate import write_per_day

    files = data_files(path)
    out.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for i, f in enumerate(files):
        try:
            frame = schema.normalize(READERS[f.suffix](f), require_labels=False)
        except Exception as exc:
            raise DataError(f"cannot read {f}: {exc}") from exc
        days = frame[schema.TX_DATETIME].dt.normalize().unique()
        earlier = [p for d in days if (p := out / f"{d:%Y-%m-%d}.parquet") in written]
        if earlier:  # a day already written from another file: its rows first, then these
            frame = schema.normalize(
                pd.concat([*map(pd.read_parquet, earlier), frame], ignore_index=True),
                require_labels=False,
            )
        written.update(write_per_day(frame, out, replace=False))
        if progress:
            progress(i + 1, len(files))
    return sorted(written)


def day_index(df: pd.DataFrame) -> np.ndarray:
    """Calendar day of each transaction, counted from the first day of the data."""
    days = df[schema.TX_DATETIME].dt.normalize()
    return np.asarray((days - days.min()).dt.days, dtype=np.int64)


@dataclass(frozen=True)
class Split:
    """Row positions of one train/test split; test rows exclude already known frauded cards."""

    train: np.ndarray
    test: np.ndarray
    train_days: tuple[int, int]
    test_days: tuple[int, int]


def handbook_split(
    df: pd.DataFrame,
    days: np.ndarray,
    train_start: int,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> Split:
    """Handbook split: train, then a delay, then test days without already-known fraud cards.

    Cards with a fraud in the training window, or seen in the delay period up to the test day
    minus the delay, are known to the investigators and removed from each test day.
    """
    customers = df[schema.CUSTOMER_ID].to_numpy()
    train_mask = (days >= train_start) & (days < train_start + train_days)
    test_start = train_start + train_days + delay_days
    known = known_cards(df, days, train_start, train_days, test_days)
    parts = []
    for d in range(test_days):
        rows = np.flatnonzero(days == test_start + d)
        keep = ~pd.Series(customers[rows]).isin(known[d]).to_numpy()
        parts.append(rows[keep])
    test = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return Split(
        np.flatnonzero(train_mask),
        test,
        (train_start, train_start + train_days),
        (test_start, test_start + test_days),
    )


def known_cards(
    df: pd.DataFrame, days: np.ndarray, train_start: int, train_days: int, test_days: int
) -> list[set[Any]]:
    """Per test day, the cards the investigators already know as fraudulent: those with a
    fraud in the training window, or in the delay period up to the test day minus the delay.
    Only fraud rows count, so a sample that keeps every fraud gives the same sets."""
    fraud = df[schema.TX_FRAUD].to_numpy() == 1
    customers = df[schema.CUSTOMER_ID].to_numpy()
    train_mask = (days >= train_start) & (days < train_start + train_days)
    known = set(customers[train_mask & fraud])
    out = []
    for d in range(test_days):
        known |= set(customers[(days == train_start + train_days + d - 1) & fraud])
        out.append(set(known))
    return out


def prequential_splits(
    df: pd.DataFrame,
    days: np.ndarray,
    first_train_start: int,
    n_folds: int,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> list[Split]:
    """Handbook splits, each shifted back ``test_days`` from the previous; stops at day 0."""
    starts = [first_train_start - k * test_days for k in range(n_folds)]
    return [
        handbook_split(df, days, s, train_days, delay_days, test_days) for s in starts if s >= 0
    ]


@dataclass(frozen=True)
class Layout:
    """Where the final split and the prequential validation folds sit in the data's days."""

    final: Split
    folds: list[Split]


def prequential_days(
    n_folds: int, train_days: int = 7, delay_days: int = 7, test_days: int = 7
) -> int:
    """The days :func:`prequential_splits` uses when the last test week ends the data."""
    return train_days + delay_days + test_days + (n_folds - 1) * test_days


def layout_days(
    n_folds: int = 4, train_days: int = 7, delay_days: int = 7, test_days: int = 7
) -> int:
    """The days :func:`handbook_layout` uses, ending with the data's last day: the final split,
    then the validation folds before it (the rows an engine must bring back; earlier days are
    the features' history only)."""
    return 2 * (train_days + delay_days + test_days) + (n_folds - 2) * test_days


def handbook_layout(
    df: pd.DataFrame,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
    n_folds: int = 4,
) -> Layout:
    """Final hold-out = the last ``test_days``; validation folds shifted back one block each."""
    days = day_index(df)
    last = int(days.max())
    test_start = last - test_days + 1
    train_start = test_start - delay_days - train_days
    if train_start < 0:
        raise DataError(
            f"data covers {last + 1} days; the protocol needs at least "
            f"{train_days + delay_days + test_days}"
        )
    final = handbook_split(df, days, train_start, train_days, delay_days, test_days)
    valid_start = train_start - delay_days - test_days
    folds = prequential_splits(df, days, valid_start, n_folds, train_days, delay_days, test_days)
    if not folds:
        raise DataError(
            f"data covers {last + 1} days; prequential validation needs at least "
            f"{2 * (train_days + delay_days + test_days)}"
        )
    return Layout(final, folds)
