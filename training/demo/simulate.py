"""Transaction simulator after the Fraud Detection Handbook's process (own, vectorised code).

Customers and terminals live on a 100 x 100 grid; a customer pays at the terminals within a
radius. Three fraud scenarios: large amounts, compromised terminals (28 days) and compromised
cards (14 days, each of their transactions with probability 1/3 becomes card-not-present at 5x
the amount). Each day has its own random streams, so a dataset can be extended day by day.
Adds the categorical fields a processor sends: ``TX_CHANNEL`` and ``MERCHANT_CATEGORY``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from training.core import schema

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
    grid: float = 100.0  # side of the square customers and terminals live on


def scaled(cfg: SimulationConfig, scale: int) -> SimulationConfig:
    """``scale`` times the customers and terminals by the same process: the grid grows by
    sqrt(scale) a side, so a customer has as many terminals within its radius, and ``scale``
    times as many terminals and cards are compromised a day, so the fraud mix stays the same."""
    if scale < 1:
        raise ValueError(f"scale must be 1 or more, got {scale}")
    return replace(
        cfg,
        n_customers=cfg.n_customers * scale,
        n_terminals=cfg.n_terminals * scale,
        grid=cfg.grid * scale**0.5,
        compromised_terminals_per_day=cfg.compromised_terminals_per_day * scale,
        compromised_customers_per_day=cfg.compromised_customers_per_day * scale,
    )


def simulate(
    cfg: SimulationConfig,
    progress: Callable[[str], None] | None = None,
    first_day: int = 0,
) -> pd.DataFrame:
    """Simulate days ``first_day .. n_days-1``; rows sorted by time, ids numbered from day 0.

    Every day draws from its own random streams (seeded by ``(seed, day)``), so the process is
    prefix-stable: the days of a shorter run are exactly the first days of a longer one, and
    ``first_day`` continues an existing dataset with the same portfolio (the demo's daily data).
    """
    frames = list(simulate_days(cfg, progress, first_day))
    if not frames:
        return _frame(cfg, {k: np.zeros(0) for k in _COLUMNS}, np.zeros(0, dtype=np.int64))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def simulate_days(
    cfg: SimulationConfig,
    progress: Callable[[str], None] | None = None,
    first_day: int = 0,
) -> Iterator[pd.DataFrame]:
    """:func:`simulate`, a day at a time (one frame a day, in order): a dataset of any size
    is written without holding more than a day."""
    say = progress or (lambda _msg: None)
    if not 0 <= first_day <= cfg.n_days:
        raise ValueError(f"first_day must be within 0..{cfg.n_days}, got {first_day}")
    rng = np.random.default_rng(cfg.seed)
    say("customer and terminal profiles")
    cust_xy, mean_amount, mean_nb_tx, term_xy = _profiles(cfg, rng)
    cat_share = np.array([v[0] for v in MERCHANT_CATEGORIES.values()])
    cat_cnp = np.array([v[1] for v in MERCHANT_CATEGORIES.values()])
    term_cat = rng.choice(len(cat_share), size=cfg.n_terminals, p=cat_share / cat_share.sum())

    say("terminals within radius")
    neighbours = cKDTree(term_xy).query_ball_point(cust_xy, r=cfg.radius)
    n_avail = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=cfg.n_customers)
    offsets = np.concatenate([[0], np.cumsum(n_avail)])
    flat = np.fromiter(
        (t for n in neighbours for t in sorted(n)), dtype=np.int64, count=int(offsets[-1])
    )
    del neighbours
    portfolio = _Portfolio(mean_amount, mean_nb_tx, n_avail, offsets, flat, cat_cnp[term_cat])
    next_id = sum(_day_volume(cfg, d, portfolio) for d in range(first_day))
    for d in range(first_day, cfg.n_days):
        say(f"day {d + 1}/{cfg.n_days}")
        day = _simulate_day(cfg, d, portfolio)
        day[schema.TRANSACTION_ID] = np.arange(next_id, next_id + len(day[_SECONDS]))
        next_id += len(day[_SECONDS])
        yield _frame(cfg, day, term_cat)


def _frame(
    cfg: SimulationConfig, cols: dict[str, np.ndarray], term_cat: np.ndarray
) -> pd.DataFrame:
    """The raw layout of simulated columns (rows sorted by time)."""
    cat_names = np.array(list(MERCHANT_CATEGORIES))
    seconds, terminal, cnp = cols[_SECONDS], cols[schema.TERMINAL_ID], cols["cnp"].astype(bool)
    start = pd.Timestamp(cfg.start_date).to_datetime64().astype("datetime64[s]")
    return pd.DataFrame(
        {
            schema.TRANSACTION_ID: cols[schema.TRANSACTION_ID].astype(np.int64),
            schema.TX_DATETIME: (start + seconds.astype("timedelta64[s]")).astype("datetime64[ns]"),
            schema.CUSTOMER_ID: cols[schema.CUSTOMER_ID].astype(np.int64),
            schema.TERMINAL_ID: terminal.astype(np.int64),
            schema.TX_AMOUNT: cols[schema.TX_AMOUNT].astype(np.float64),
            schema.TX_TIME_SECONDS: seconds.astype(np.int64),
            schema.TX_TIME_DAYS: (seconds // SECONDS_PER_DAY).astype(np.int64),
            schema.TX_FRAUD: cols[schema.TX_FRAUD].astype(np.int8),
            schema.TX_FRAUD_SCENARIO: cols[schema.TX_FRAUD_SCENARIO].astype(np.int8),
            schema.TX_CHANNEL: np.where(cnp, schema.CHANNELS[1], schema.CHANNELS[0]),
            schema.MERCHANT_CATEGORY: cat_names[term_cat[terminal.astype(np.int64)]],
        }
    )


_SECONDS = "seconds"
_COLUMNS = (
    schema.TRANSACTION_ID,
    _SECONDS,
    schema.CUSTOMER_ID,
    schema.TERMINAL_ID,
    schema.TX_AMOUNT,
    schema.TX_FRAUD,
    schema.TX_FRAUD_SCENARIO,
    "cnp",
)


@dataclass(frozen=True)
class _Portfolio:
    mean_amount: np.ndarray
    mean_nb_tx: np.ndarray
    n_avail: np.ndarray  # terminals within reach, per customer
    offsets: np.ndarray  # customer -> start of its terminals in ``flat``
    flat: np.ndarray
    terminal_cnp: np.ndarray  # card-not-present probability per terminal


def _streams(cfg: SimulationConfig, day: int) -> tuple[np.random.Generator, ...]:
    """Independent streams of one day: transactions, compromised terminals, compromised cards."""
    return tuple(np.random.default_rng([cfg.seed, day, k]) for k in range(3))


def _draw_volume(
    cfg: SimulationConfig, rng: np.random.Generator, p: _Portfolio
) -> tuple[np.ndarray, np.ndarray]:
    """Customer and time of day of a day's transactions (the first draws of its stream)."""
    counts = rng.poisson(p.mean_nb_tx)
    counts[p.n_avail == 0] = 0
    customer = np.repeat(np.arange(cfg.n_customers), counts)
    tod = rng.normal(SECONDS_PER_DAY / 2, 20_000, size=customer.size).astype(np.int64)
    keep = (tod > 0) & (tod < SECONDS_PER_DAY)
    return customer[keep], tod[keep]


def _day_volume(cfg: SimulationConfig, day: int, p: _Portfolio) -> int:
    return len(_draw_volume(cfg, _streams(cfg, day)[0], p)[0])


def _compromised(cfg: SimulationConfig, day: int, k: int, n: int, per_day: int, span: int):
    """Ids picked on days ``day-span+1 .. day`` (stream ``k``): compromised on ``day``."""
    picked = [
        _streams(cfg, d)[k].choice(n, size=per_day, replace=False)
        for d in range(max(0, day - span + 1), day + 1)
    ]
    return np.unique(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _simulate_day(cfg: SimulationConfig, day: int, p: _Portfolio) -> dict[str, np.ndarray]:
    rng = _streams(cfg, day)[0]
    customer, tod = _draw_volume(cfg, rng, p)
    n = customer.size
    mean = p.mean_amount[customer]
    amount = rng.normal(mean, mean / 2)
    neg = amount < 0
    amount[neg] = rng.uniform(0, 2 * mean[neg])
    amount = np.round(amount, 2)
    pick = (rng.random(n) * p.n_avail[customer]).astype(np.int64)
    terminal = p.flat[p.offsets[customer] + pick]
    cnp = rng.random(n) < p.terminal_cnp[terminal]
    card_draw = rng.random(n)  # scenario 3: one transaction in three of a compromised card
    order = np.argsort(tod, kind="stable")
    customer, tod, amount, terminal = customer[order], tod[order], amount[order], terminal[order]
    cnp, card_draw = cnp[order], card_draw[order]

    fraud = np.zeros(n, dtype=np.int8)
    scenario = np.zeros(n, dtype=np.int8)
    big = amount > cfg.terminal_threshold
    fraud[big], scenario[big] = 1, 1
    hot_terminals = _compromised(
        cfg,
        day,
        1,
        cfg.n_terminals,
        cfg.compromised_terminals_per_day,
        cfg.terminal_compromise_days,
    )
    hit = np.isin(terminal, hot_terminals)
    fraud[hit], scenario[hit] = 1, 2
    hot_cards = _compromised(
        cfg,
        day,
        2,
        cfg.n_customers,
        cfg.compromised_customers_per_day,
        cfg.customer_compromise_days,
    )
    stolen = np.isin(customer, hot_cards) & (card_draw < 1 / 3)
    amount[stolen] = np.round(amount[stolen] * cfg.card_fraud_multiplier, 2)
    fraud[stolen], scenario[stolen], cnp[stolen] = 1, 3, True
    return {
        _SECONDS: day * SECONDS_PER_DAY + tod,
        schema.CUSTOMER_ID: customer,
        schema.TERMINAL_ID: terminal,
        schema.TX_AMOUNT: amount,
        schema.TX_FRAUD: fraud,
        schema.TX_FRAUD_SCENARIO: scenario,
        "cnp": cnp,
    }


def _profiles(
    cfg: SimulationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customer locations, mean amounts, mean transactions per day; terminal locations."""
    cust_xy = rng.uniform(0, cfg.grid, size=(cfg.n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=cfg.n_customers)
    mean_nb_tx = rng.uniform(0, 4, size=cfg.n_customers)
    term_xy = rng.uniform(0, cfg.grid, size=(cfg.n_terminals, 2))
    return cust_xy, mean_amount, mean_nb_tx, term_xy


def terminals_within_radius(cfg: SimulationConfig) -> np.ndarray:
    """Number of terminals each customer of ``simulate(cfg)`` can use (same draws)."""
    cust_xy, _, _, term_xy = _profiles(cfg, np.random.default_rng(cfg.seed))
    counts = cKDTree(term_xy).query_ball_point(cust_xy, r=cfg.radius, return_length=True)
    return np.asarray(counts)


def write_per_day(df: pd.DataFrame, out_dir: Path, replace: bool = True) -> list[Path]:
    """Write one parquet file per calendar day, ``YYYY-MM-DD.parquet``; returns the paths.

    ``replace`` removes the folder's other day files first (a new dataset); without it the
    days are added beside the existing ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if replace:
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


CONFIG_FILE = "simulation.json"


def save_config(cfg: SimulationConfig, root: Path, extra: dict | None = None) -> Path:
    """The simulation's parameters beside its ``transactions/`` folder (so it can be extended)."""
    path = root / CONFIG_FILE
    path.write_text(json.dumps({**asdict(cfg), **(extra or {})}, indent=2))
    return path


def load_config(root: Path) -> tuple[SimulationConfig, dict]:
    """Parameters of a simulated dataset and the extra fields saved with them."""
    raw = json.loads((root / CONFIG_FILE).read_text())
    names = {f.name for f in fields(SimulationConfig)}
    return SimulationConfig(**{k: v for k, v in raw.items() if k in names}), {
        k: v for k, v in raw.items() if k not in names
    }


def append_days(root: Path, n_days: int, key: str | None = None) -> list[Path]:
    """Extend the simulated dataset at ``root`` by ``n_days`` new days (the demo's daily data).

    With ``key`` (a pipeline run id) the call is idempotent: a key already applied adds nothing.
    """
    cfg, extra = load_config(root)
    applied: list[str] = list(extra.get("appended_by", []))
    if key is not None and key in applied:
        return []
    longer = replace(cfg, n_days=cfg.n_days + n_days)
    new = simulate(longer, first_day=cfg.n_days)
    paths = write_per_day(new, root / "transactions", replace=False)
    if key is not None:
        applied.append(key)
    save_config(longer, root, {**extra, "appended_by": applied})
    return paths
