"""The decision rules' cost (`make bench` prints it): 50 rules of every kind evaluated on
batches of 1, 12, 100 and 1,000 transactions, in µs a transaction (median of the repeats).
The rules read the batch's columns and the score, as serving passes them; the lists hold
10,000 members each.

    python -m tests.bench.rules_cost [--repeats 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training.core import rules


def fifty() -> rules.RuleSet:
    """8 list rules, 20 numeric comparisons, 6 text ones, 8 velocity rules, 8 score bands."""
    out: list[dict[str, object]] = []
    for i in range(8):
        out.append({"name": f"list-{i}", "kind": "list", "entity": ("customer", "terminal")[i % 2],
                    "list": f"list_{i}", "action": ("approve", "decline")[i // 4]})  # fmt: skip
    for i in range(20):
        field = ("tx_amount", "CUSTOMER_ID_NB_TX_7DAY_WINDOW", "score")[i % 3]
        out.append({"name": f"num-{i}", "kind": "compare", "field": field, "op": ">=",
                    "value": 10_000 + i, "action": "review"})  # fmt: skip
    for i in range(6):
        out.append({"name": f"text-{i}", "kind": "compare", "field": "merchant_category",
                    "op": "==", "value": f"category-{i}", "action": "review"})  # fmt: skip
    for i in range(8):
        window, measure = (1, 7, 30)[i % 3], ("count", "sum")[i % 2]
        out.append({"name": f"velocity-{i}", "kind": "velocity", "window_days": window,
                    "measure": measure, "value": 1e9, "action": "decline"})  # fmt: skip
    for i in range(8):
        out.append({"name": f"band-{i}", "kind": "score", "min": 2.0 + i, "action": "decline"})
    return rules.RuleSet.model_validate({"version": "bench-50", "rules": out})


def batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {
        "customer_id": rng.integers(0, 10**6, n).astype(str).astype(object),
        "terminal_id": rng.integers(0, 10**6, n).astype(str).astype(object),
        "tx_amount": rng.gamma(2, 50, n),
        "merchant_category": rng.choice(["grocery", "travel", "fuel"], n).astype(object),
    }
    for w in (1, 7, 30):
        cols[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = rng.integers(1, 50, n).astype(float)
        cols[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = rng.gamma(2, 50, n)
    return cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ruleset = fifty()
    lists = {f"list_{i}": frozenset(rng.integers(0, 10**6, 10_000).astype(str)) for i in range(8)}
    print(f"| batch | µs a transaction, {len(ruleset.rules)} rules (median of {args.repeats}) |")
    print("|---:|---:|")
    for n in (1, 12, 100, rules.ROW_WISE, rules.ROW_WISE + 1, 1000):
        cols, score = batch(n, rng), rng.random(n)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rules.evaluate(ruleset, cols, score, 0.5, lists)  # no rule matches: all 50 run
            times.append(time.perf_counter() - t0)
        print(f"| {n:,} | {np.median(times) / n * 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
