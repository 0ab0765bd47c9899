"""Bring your own data: file or folder, parquet/CSV/pickle, lenient dtypes, clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.core import schema
from training.data import DataError, handbook_layout, load_transactions
from training.demo.simulate import SimulationConfig, simulate, write_per_day


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return simulate(SimulationConfig(n_customers=80, n_terminals=160, n_days=5, seed=3))


def test_folder_of_daily_parquet(raw: pd.DataFrame, tmp_path: Path) -> None:
    write_per_day(raw, tmp_path)
    df = load_transactions(tmp_path)
    assert len(df) == len(raw)
    assert df[schema.TX_DATETIME].is_monotonic_increasing
    assert df[schema.CUSTOMER_ID].map(type).eq(str).all()


@pytest.mark.parametrize("suffix", [".csv", ".pkl", ".parquet"])
def test_single_file_with_string_ids_and_times(
    raw: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    odd = raw.drop(columns=[schema.TX_CHANNEL, schema.MERCHANT_CATEGORY]).astype(
        {schema.CUSTOMER_ID: str, schema.TERMINAL_ID: object, schema.TX_AMOUNT: str}
    )
    odd[schema.TX_DATETIME] = odd[schema.TX_DATETIME].dt.strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / f"tx{suffix}"
    {
        ".csv": lambda p: odd.to_csv(p, index=False),
        ".pkl": odd.to_pickle,
        ".parquet": lambda p: odd.to_parquet(p, index=False),
    }[suffix](path)
    df = load_transactions(path)
    assert len(df) == len(raw)
    assert df[schema.TX_AMOUNT].dtype == "float64"
    assert df[schema.CUSTOMER_ID].iloc[0] == str(raw[schema.CUSTOMER_ID].iloc[0])


def test_integral_float_ids_normalise_like_ints(raw: pd.DataFrame, tmp_path: Path) -> None:
    a = raw.head(20).copy()
    a[schema.CUSTOMER_ID] = a[schema.CUSTOMER_ID].astype(float)
    a.to_csv(tmp_path / "a.csv", index=False)
    assert (
        load_transactions(tmp_path / "a.csv")[schema.CUSTOMER_ID].tolist()
        == raw.head(20)[schema.CUSTOMER_ID].astype(str).tolist()
    )


def test_missing_column_is_named(raw: pd.DataFrame, tmp_path: Path) -> None:
    raw.drop(columns=[schema.TERMINAL_ID]).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match="TERMINAL_ID"):
        load_transactions(tmp_path / "x.csv")


def test_bad_values_are_named(raw: pd.DataFrame, tmp_path: Path) -> None:
    bad = raw.head(10).copy()
    bad[schema.TX_DATETIME] = "not a date"
    bad.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="TX_DATETIME"):
        load_transactions(tmp_path / "t.csv")
    bad = raw.head(10).astype({schema.TX_AMOUNT: object})
    bad.loc[0, schema.TX_AMOUNT] = "abc"
    bad.to_pickle(tmp_path / "a.pkl")
    with pytest.raises(ValueError, match="TX_AMOUNT"):
        load_transactions(tmp_path / "a.pkl")


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_transactions(tmp_path / "nope")
    with pytest.raises(DataError, match="no transaction files"):
        load_transactions(tmp_path)


def test_too_short_for_protocol(raw: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="needs at least"):
        handbook_layout(schema.normalize(raw))


def test_csv_and_pickle_convert_once_to_a_parquet_file_a_day(tmp_path) -> None:
    """`fraudops convert`: a CSV with day 1 and the first half of day 2, a pickle with the rest
    of day 2 and day 3, become three day files holding every row, normalised, in order."""
    from training.data import convert_to_parquet

    raw = schema.normalize(simulate(SimulationConfig(n_customers=80, n_terminals=160, n_days=3)))
    day = (
        raw[schema.TX_DATETIME].dt.normalize() - raw[schema.TX_DATETIME].min().normalize()
    ).dt.days
    cut = int(day.searchsorted(1) + (day == 1).sum() // 2)
    src = tmp_path / "src"
    src.mkdir()
    raw.iloc[:cut].assign(
        **{schema.TX_DATETIME: raw[schema.TX_DATETIME].iloc[:cut].astype(str)}
    ).to_csv(src / "a.csv", index=False)
    raw.iloc[cut:].to_pickle(src / "b.pkl")
    files = convert_to_parquet(src, tmp_path / "out")
    assert [f.name for f in files] == [
        "2018-04-01.parquet",
        "2018-04-02.parquet",
        "2018-04-03.parquet",
    ]
    pd.testing.assert_frame_equal(load_transactions(tmp_path / "out"), raw, check_dtype=False)
