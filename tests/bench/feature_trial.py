"""Behavioural features on trial: each candidate added to the served feature set, one at a
time, scored by prequential validation on the handbook protocol (4 folds of train 7 / delay 7 /
test 7 days, a random forest of 100 trees, depth 20). A candidate earns its place only when its
mean AP beats the served set's by more than one standard error (of the served set's folds).

The candidates are computed here, offline only, point in time (each transaction sees only the
customer's and terminal's earlier transactions); one that earns its place must then join the
shared definition (training/core/features.py) and the online state, with the parity test.

    python -m tests.bench.feature_trial --data data/demo/transactions
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from training import data
from training.core import features, schema
from training.train import Candidate, fit_and_score

DAY = pd.Timedelta(days=1)


def _rolling(raw: pd.DataFrame, key: str, window: str, column: str, how: str) -> np.ndarray:
    """Per ``key``, ``how`` of ``column`` over the earlier transactions in ``window`` (the
    current one left out: closed on the left); NaN when there are none."""
    frame = raw[[key, schema.TX_DATETIME, column]].copy()
    frame["_pos"] = np.arange(len(frame))
    out = np.full(len(frame), np.nan)
    for _, g in frame.groupby(key, sort=False):
        g = g.sort_values([schema.TX_DATETIME, "_pos"])
        r = g.rolling(window, on=schema.TX_DATETIME, closed="left")[column]
        values = (
            getattr(r, how)()
            if how != "nunique"
            else r.apply(lambda x: len(np.unique(x)), raw=True)
        )
        out[g["_pos"].to_numpy()] = values.to_numpy()
    return out


def large_now(raw: pd.DataFrame, feats: pd.DataFrame, days: int = 14, factor: float = 3.0
              ) -> np.ndarray:  # fmt: skip
    """The customer's earlier transactions in the past ``days`` whose amount exceeds
    ``factor`` times the customer's 30-day average as of now: what the online state's 30 days
    of amounts can give (the per-transaction flag needs each one's own average, 44 days back)."""
    t = features.to_ms(raw[schema.TX_DATETIME])
    cents = features.to_cents(raw[schema.TX_AMOUNT])
    cust = pd.factorize(raw[schema.CUSTOMER_ID])[0]
    order = np.lexsort((np.arange(len(raw)), t, cust))
    c, tt, a = cust[order], t[order], cents[order]
    avg = feats["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"].to_numpy()[order] * 100
    count = np.zeros(len(raw))
    span = days * features.MS_PER_DAY
    j = 1
    while True:
        same = np.zeros(len(raw), dtype=bool)
        same[j:] = (c[j:] == c[:-j]) & (tt[j:] - tt[:-j] < span)
        if not same.any():
            break
        big = np.zeros(len(raw), dtype=bool)
        big[j:] = a[:-j] > factor * avg[j:]
        count += same & big
        j += 1
    out = np.zeros(len(raw))
    out[order] = count
    return out


def candidates(raw: pd.DataFrame, feats: pd.DataFrame) -> dict[str, np.ndarray]:
    """Behavioural features a fraud analyst asks for (point in time)."""
    amount = raw[schema.TX_AMOUNT].to_numpy()
    cust = raw.assign(TERM_CODE=pd.factorize(raw[schema.TERMINAL_ID])[0].astype(float))
    term = raw.assign(CUST_CODE=pd.factorize(raw[schema.CUSTOMER_ID])[0].astype(float))
    out: dict[str, np.ndarray] = {}
    for w in (7, 30):
        med = _rolling(raw, schema.CUSTOMER_ID, f"{w}D", schema.TX_AMOUNT, "median")
        top = _rolling(raw, schema.CUSTOMER_ID, f"{w}D", schema.TX_AMOUNT, "max")
        out[f"AMOUNT_TO_CUSTOMER_MEDIAN_{w}DAY"] = np.nan_to_num(amount / med, nan=1.0)
        out[f"AMOUNT_TO_CUSTOMER_MAX_{w}DAY"] = np.nan_to_num(amount / top, nan=1.0)
    large = (feats["AMOUNT_TO_CUSTOMER_AVG_30DAY"].to_numpy() > 3).astype(float)
    out["CUSTOMER_NB_LARGE_TX_14DAY"] = np.nan_to_num(
        _rolling(raw.assign(LARGE=large), schema.CUSTOMER_ID, "14D", "LARGE", "sum"), nan=0.0
    )
    out["CUSTOMER_NB_LARGE_TX_14DAY_NOW"] = large_now(raw, feats)
    out["CUSTOMER_NB_TERMINALS_1DAY"] = np.nan_to_num(
        _rolling(cust, schema.CUSTOMER_ID, "1D", "TERM_CODE", "nunique"), nan=0.0
    )
    out["TERMINAL_NB_CUSTOMERS_7DAY"] = np.nan_to_num(
        _rolling(term, schema.TERMINAL_ID, "7D", "CUST_CODE", "nunique"), nan=0.0
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/demo/transactions"))
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("reports/feature_trial.json"))
    ap.add_argument("--only", nargs="*", default=None, help="candidates to try (default: all)")
    args = ap.parse_args()
    raw = data.load_transactions(args.data)
    feats = features.offline_features(raw)
    t0 = time.perf_counter()
    extra = candidates(raw, feats)
    if args.only:
        extra = {k: v for k, v in extra.items() if k in args.only}
    print(f"{len(raw):,} transactions; candidates computed in {time.perf_counter() - t0:.0f} s")
    for name, values in extra.items():
        feats[name] = values
    categorical = features.has_categoricals(raw)
    served = features.feature_names(features.FeatureConfig(), categorical)
    days = data.day_index(raw)
    first = int(days.max()) - 21 + 1
    splits = data.prequential_splits(raw, days, first, args.folds)
    cand = Candidate(n_estimators=100, max_depth=20)

    def folds_ap(columns: list[str]) -> np.ndarray:
        aps = []
        for split in splits:
            _, res = fit_and_score(cand, feats[columns], raw, split, categorical, days)
            aps.append(res.metrics["ap"])
        return np.array(aps)

    base = folds_ap(served)
    se = float(base.std() / np.sqrt(len(base)))
    print(f"served set ({len(served)} features): AP {base.mean():.4f} ± {base.std():.4f} "
          f"(standard error {se:.4f})")  # fmt: skip
    rows = [{"features": "served", "ap": base.tolist(), "mean": float(base.mean())}]
    for name in extra:
        aps = folds_ap([*served, name])
        gain = float(aps.mean() - base.mean())
        keep = gain > se
        rows.append({"features": f"+{name}", "ap": aps.tolist(), "mean": float(aps.mean()),
                     "gain": gain, "keep": keep})  # fmt: skip
        verdict = "keep" if keep else "drop"
        print(f"+{name}: AP {aps.mean():.4f} ± {aps.std():.4f}, gain {gain:+.4f} "
              f"({verdict}: one standard error is {se:.4f})", flush=True)  # fmt: skip
    every = folds_ap([*served, *extra])
    print(f"all candidates together: AP {every.mean():.4f} ± {every.std():.4f}, "
          f"gain {every.mean() - base.mean():+.4f}")  # fmt: skip
    rows.append({"features": "+all", "ap": every.tolist(), "mean": float(every.mean())})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"standard_error": se, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
