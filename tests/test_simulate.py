"""The simulator follows the handbook's process (statistics at a small scale) and a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm, truncnorm

from training.core import schema
from training.demo.simulate import (
    SimulationConfig,
    simulate,
    terminals_within_radius,
    write_per_day,
)

CFG = SimulationConfig(n_customers=1000, n_terminals=2000, n_days=60, seed=11)


def test_deterministic_for_a_seed() -> None:
    a = simulate(CFG)
    b = simulate(CFG)
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SimulationConfig(**{**CFG.__dict__, "seed": 12}))
    assert not a[schema.TX_AMOUNT].equals(c[schema.TX_AMOUNT])


def test_volume_and_time_of_day() -> None:
    df = simulate(CFG)
    per_day = df.groupby(schema.TX_TIME_DAYS).size()
    # Mean tx per customer per day ~ U(0, 4) -> 2; N(12h, 20000 s) draws outside the day
    # (|z| > 2.16, 3.1 %) are discarded.
    inside = truncnorm(-2.16, 2.16)
    expected = CFG.n_customers * 2 * (norm.cdf(2.16) - norm.cdf(-2.16))
    assert abs(per_day.mean() - expected) / expected < 0.08
    tod = df[schema.TX_TIME_SECONDS] % 86_400
    assert abs(tod.mean() - 43_200) < 600
    assert abs(tod.std() - 20_000 * inside.std()) < 400
    assert df[schema.TX_DATETIME].is_monotonic_increasing
    assert (df[schema.TRANSACTION_ID] == np.arange(len(df))).all()
    assert (df[schema.TX_AMOUNT] >= 0).all()


def test_fraud_scenarios() -> None:
    df = simulate(CFG)
    fraud = df[df[schema.TX_FRAUD] == 1]
    shares = fraud[schema.TX_FRAUD_SCENARIO].value_counts(normalize=True)
    assert set(shares.index) == {1, 2, 3}
    # Scenario 2 dominates (2 terminals/day for 28 days), then 3, then 1, as published.
    assert shares[2] > shares[3] > shares[1]
    assert (df.loc[df[schema.TX_FRAUD] == 0, schema.TX_FRAUD_SCENARIO] == 0).all()
    assert (df.loc[df[schema.TX_FRAUD_SCENARIO] == 1, schema.TX_AMOUNT] > 220).all()
    # Scenario-3 fraud is card-not-present by construction.
    s3 = df[df[schema.TX_FRAUD_SCENARIO] == 3]
    assert (s3[schema.TX_CHANNEL] == "card_not_present").all()
    genuine_cnp = (df.loc[df[schema.TX_FRAUD] == 0, schema.TX_CHANNEL] == "card_not_present").mean()
    assert 0.05 < genuine_cnp < 0.4


def test_full_scale_fraud_rate_matches_published() -> None:
    # The published run (5,000 customers, 10,000 terminals) has 0.837 % fraud; a 60-day run of
    # the same density lands near it (scenario 2 scales with terminals, 3 with customers).
    df = simulate(SimulationConfig(n_customers=5000, n_terminals=10000, n_days=60, seed=1))
    assert 0.005 < df[schema.TX_FRAUD].mean() < 0.011


def test_terminals_within_radius() -> None:
    counts = terminals_within_radius(SimulationConfig(n_customers=2000, n_terminals=10000))
    # Density 1 terminal per unit^2 -> pi * 25 ~ 78.5 terminals away from the grid's edges.
    assert 65 < counts.mean() < 80
    assert np.median(counts) > 70


def test_write_per_day(tmp_path) -> None:
    df = simulate(SimulationConfig(n_customers=50, n_terminals=100, n_days=3, seed=2))
    paths = write_per_day(df, tmp_path)
    assert [p.name for p in paths] == [
        "2018-04-01.parquet",
        "2018-04-02.parquet",
        "2018-04-03.parquet",
    ]
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    assert len(back) == len(df)


def test_customers_only_use_terminals_within_radius() -> None:
    cfg = SimulationConfig(n_customers=300, n_terminals=600, n_days=20, seed=3)
    df = simulate(cfg)
    available = terminals_within_radius(cfg)
    used = df.groupby(schema.CUSTOMER_ID)[schema.TERMINAL_ID].nunique()
    assert (used.to_numpy() <= available[used.index.to_numpy()]).all()
    # customers with no terminal in reach make no transactions
    assert set(np.flatnonzero(available == 0)).isdisjoint(used.index)


def test_prefix_stable_and_extendable(tmp_path) -> None:
    """A shorter run is the start of a longer one; appending days continues the same data."""
    small = SimulationConfig(n_customers=300, n_terminals=600, n_days=20, seed=5)
    long = simulate(SimulationConfig(**{**small.__dict__, "n_days": 30}))
    short = simulate(small)
    pd.testing.assert_frame_equal(short, long.iloc[: len(short)])
    tail = simulate(SimulationConfig(**{**small.__dict__, "n_days": 30}), first_day=20)
    pd.testing.assert_frame_equal(tail, long.iloc[len(short) :].reset_index(drop=True))

    from training.demo.simulate import append_days, load_config, save_config

    write_per_day(short, tmp_path / "transactions")
    save_config(small, tmp_path)
    added = append_days(tmp_path, 10, key="run-1")
    assert len(added) == 10
    assert append_days(tmp_path, 10, key="run-1") == []  # idempotent per key
    files = sorted((tmp_path / "transactions").glob("*.parquet"))
    back = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(back, long, check_dtype=False)
    cfg, extra = load_config(tmp_path)
    assert cfg.n_days == 30 and extra["appended_by"] == ["run-1"]


def test_a_scaled_run_is_the_same_process_n_times_over() -> None:
    """`--scale 4`: four times the customers and terminals on a grid twice as wide, so each
    customer reaches as many terminals and pays as often; four times the compromises a day."""
    from training.demo.simulate import scaled, simulate_days

    base = SimulationConfig(n_customers=500, n_terminals=1_000, n_days=20, seed=5)
    big = scaled(base, 4)
    assert (big.n_customers, big.n_terminals, big.grid) == (2_000, 4_000, 200.0)
    assert big.compromised_terminals_per_day == 8 and big.compromised_customers_per_day == 12
    reach = terminals_within_radius(base).mean(), terminals_within_radius(big).mean()
    assert abs(reach[1] / reach[0] - 1) < 0.1
    one, four = simulate(base), simulate(big)
    assert 3.6 < len(four) / len(one) < 4.4
    assert abs(four[schema.TX_FRAUD].mean() / one[schema.TX_FRAUD].mean() - 1) < 0.35
    days = list(simulate_days(big))  # a day at a time, the same rows
    assert len(days) == 20 and all(
        d[schema.TX_DATETIME].dt.normalize().nunique() == 1 for d in days
    )
    pd.testing.assert_frame_equal(pd.concat(days, ignore_index=True), four)
