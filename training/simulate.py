"""Transaction simulator after the Fraud Detection Handbook's process (own, vectorised code).

Customers and terminals live on a 100 x 100 grid; a customer pays at the terminals within a
radius. Three fraud scenarios: large amounts, compromised terminals (28 days) and compromised
cards (14 days, one third of their transactions become card-not-present at 5x the amount).
Adds the categorical fields a processor sends: ``TX_CHANNEL`` and ``MERCHANT_CATEGORY``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from training import schema

SECONDS_PER_DAY = 86_400

# Merchant categories with their share of terminals and the probability that a *genuine*
# payment at such a merchant is card-not-present.
MERCHANT_CATEGORIES: dict[str, tuple[float, float]] = {
    "grocery": (0.22, 0.03),
    "restaurants": (0.18, 0.06),
    "fuel": (0.10, 0.01),
    "retail": (0.18, 0.15),
    "pharmacy": (0.07, 0.05),
    "travel": (0.07, 0.55),
    "electronics": (0.08, 0.35),
    "digital_services": (0.10, 0.90),
}


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of one simulated dataset (defaults: the handbook's published run)."""

    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    terminal_threshold: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14
    card_fraud_multiplier: float = 5.0


def simulate(cfg: SimulationConfig, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Simulate transactions; rows sorted by time, the row index is the transaction id."""
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(cfg.seed)
    say("customer and terminal profiles")
    cust_xy, mean_amount, mean_nb_tx, term_xy = _profiles(cfg, rng)
    std_amount = mean_amount / 2
    cat_names = np.array(list(MERCHANT_CATEGORIES))
    cat_share = np.array([v[0] for v in MERCHANT_CATEGORIES.values()])
    cat_cnp = np.array([v[1] for v in MERCHANT_CATEGORIES.values()])
    term_cat = rng.choice(len(cat_names), size=cfg.n_terminals, p=cat_share / cat_share.sum())

    say("terminals within radius")
    neighbours = cKDTree(term_xy).query_ball_point(cust_xy, r=cfg.radius)
    n_avail = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=cfg.n_customers)
    offsets = np.concatenate([[0], np.cumsum(n_avail)])
    flat = np.fromiter(
        (t for n in neighbours for t in sorted(n)), dtype=np.int64, count=int(offsets[-1])
    )

    say("daily transactions")
    counts = rng.poisson(mean_nb_tx[:, None], size=(cfg.n_customers, cfg.n_days))
    counts[n_avail == 0] = 0
    per_cust = counts.sum(axis=1)
    customer = np.repeat(np.arange(cfg.n_customers), per_cust)
    day = np.concatenate([np.repeat(np.arange(cfg.n_days), row) for row in counts])
    tod = rng.normal(SECONDS_PER_DAY / 2, 20_000, size=customer.size).astype(np.int64)
    keep = (tod > 0) & (tod < SECONDS_PER_DAY)
    customer, day, tod = customer[keep], day[keep], tod[keep]
    n = customer.size
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    neg = amount < 0
    amount[neg] = rng.uniform(0, 2 * mean_amount[customer[neg]])
    amount = np.round(amount, 2)
    pick = (rng.random(n) * n_avail[customer]).astype(np.int64)
    terminal = flat[offsets[customer] + pick]
    cnp = rng.random(n) < cat_cnp[term_cat[terminal]]

    seconds = day * SECONDS_PER_DAY + tod
    order = np.argsort(seconds, kind="stable")
    customer, terminal, day = customer[order], terminal[order], day[order]
    seconds, amount, cnp = seconds[order], amount[order], cnp[order]

    say("fraud scenarios")
    fraud = np.zeros(n, dtype=np.int8)
    scenario = np.zeros(n, dtype=np.int8)
    big = amount > cfg.terminal_threshold
    fraud[big], scenario[big] = 1, 1

    hot = np.zeros((cfg.n_terminals, cfg.n_days + 1), dtype=np.int32)
    for d in range(cfg.n_days):
        picked = rng.choice(cfg.n_terminals, size=cfg.compromised_terminals_per_day, replace=False)
        end = min(d + cfg.terminal_compromise_days, cfg.n_days)
        hot[picked, d] += 1
        hot[picked, end] -= 1
    compromised_terminal = np.cumsum(hot, axis=1)[terminal, day] > 0
    fraud[compromised_terminal], scenario[compromised_terminal] = 1, 2

    by_customer = np.argsort(customer, kind="stable")
    cust_start = np.searchsorted(customer[by_customer], np.arange(cfg.n_customers + 1))
    for d in range(cfg.n_days):
        picked = rng.choice(cfg.n_customers, size=cfg.compromised_customers_per_day, replace=False)
        lo, hi = d * SECONDS_PER_DAY, (d + cfg.customer_compromise_days) * SECONDS_PER_DAY
        for c in picked:
            rows = by_customer[cust_start[c] : cust_start[c + 1]]
            rows = rows[(seconds[rows] >= lo) & (seconds[rows] < hi)]
            if rows.size < 3:
                continue
            chosen = rng.choice(rows, size=rows.size // 3, replace=False)
            amount[chosen] = np.round(amount[chosen] * cfg.card_fraud_multiplier, 2)
            fraud[chosen], scenario[chosen], cnp[chosen] = 1, 3, True

    say("assembling frame")
    start = pd.Timestamp(cfg.start_date).to_datetime64().astype("datetime64[s]")
    return pd.DataFrame(
        {
            schema.TRANSACTION_ID: np.arange(n, dtype=np.int64),
            schema.TX_DATETIME: (start + seconds.astype("timedelta64[s]")).astype("datetime64[ns]"),
            schema.CUSTOMER_ID: customer,
            schema.TERMINAL_ID: terminal,
            schema.TX_AMOUNT: amount,
            schema.TX_TIME_SECONDS: seconds,
            schema.TX_TIME_DAYS: day,
            schema.TX_FRAUD: fraud,
            schema.TX_FRAUD_SCENARIO: scenario,
            schema.TX_CHANNEL: np.where(cnp, schema.CHANNELS[1], schema.CHANNELS[0]),
            schema.MERCHANT_CATEGORY: cat_names[term_cat[terminal]],
        }
    )


def _profiles(
    cfg: SimulationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customer locations, mean amounts, mean transactions per day; terminal locations."""
    cust_xy = rng.uniform(0, 100, size=(cfg.n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=cfg.n_customers)
    mean_nb_tx = rng.uniform(0, 4, size=cfg.n_customers)
    term_xy = rng.uniform(0, 100, size=(cfg.n_terminals, 2))
    return cust_xy, mean_amount, mean_nb_tx, term_xy


def terminals_within_radius(cfg: SimulationConfig) -> np.ndarray:
    """Number of terminals each customer of ``simulate(cfg)`` can use (same draws)."""
    cust_xy, _, _, term_xy = _profiles(cfg, np.random.default_rng(cfg.seed))
    counts = cKDTree(term_xy).query_ball_point(cust_xy, r=cfg.radius, return_length=True)
    return np.asarray(counts)


def write_per_day(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one parquet file per calendar day, ``YYYY-MM-DD.parquet``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.parquet"):
        old.unlink()
    days = df[schema.TX_DATETIME].dt.normalize()
    paths = []
    bounds = np.flatnonzero(np.diff(days.to_numpy().astype("int64"))) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(df)]])
    for lo, hi in zip(starts, ends, strict=True):
        part = df.iloc[lo:hi]
        path = out_dir / f"{days.iloc[lo]:%Y-%m-%d}.parquet"
        part.to_parquet(path, index=False)
        paths.append(path)
    return paths
