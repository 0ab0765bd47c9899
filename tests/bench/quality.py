"""Model families x feature sets on the handbook protocol: AUC, AP and CP@100, mean ± std
over the prequential folds, as a markdown table (docs/model.md quotes it).

    fraudops simulate --out data/full          # the handbook's scale: 5,000 customers, 183 days
    python -m tests.bench.quality --data data/full/transactions --train-start 2018-08-15

``--train-start`` is the first fold's first training day; the other folds shift back a week
each (2018-08-15, -08, -01, 07-25: the handbook's own test periods).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

from training import data, evaluate
from training.core import features
from training.train import Candidate

FAMILIES = {
    "random forest (100 trees, depth 20)": Candidate(n_estimators=100, max_depth=20),
    "XGBoost (200 trees, depth 4, lr 0.1)": Candidate(
        family="xgb", n_estimators=200, boost_depth=4, learning_rate=0.1
    ),
    "soft vote RF depth 10 + XGBoost": Candidate(
        family="ensemble", n_estimators=100, max_depth=10, boost_depth=4
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/full/transactions"))
    ap.add_argument("--train-start", type=date.fromisoformat, default=None)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--feature-sets", nargs="*", default=list(evaluate.FEATURE_SETS))
    ap.add_argument("--out", type=Path, default=Path("reports/quality.json"))
    args = ap.parse_args()
    raw = data.load_transactions(args.data)
    feats = features.offline_features(raw)
    print(f"{len(raw):,} transactions, {int(raw['TX_FRAUD'].sum()):,} frauds")
    rows = []
    for name, cand in FAMILIES.items():
        for fs in args.feature_sets:
            t0 = time.perf_counter()
            rep = evaluate.handbook_evaluation(
                raw, feats, cand, n_folds=args.folds, feature_set=fs, train_start=args.train_start
            )
            s = rep["summary"]
            seconds = time.perf_counter() - t0
            rows.append({"family": name, "feature_set": fs, "summary": s, "seconds": seconds})
            print(
                f"{name} / {fs}: AUC {s['auc']['mean']:.3f} ± {s['auc']['std']:.3f}, "
                f"AP {s['ap']['mean']:.3f} ± {s['ap']['std']:.3f}, "
                f"CP@100 {s['cp100']['mean']:.3f} ± {s['cp100']['std']:.3f} "
                f"({seconds:.0f} s)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("\n| family | features | AUC | AP | CP@100 |\n|---|---|---|---|---|")
    for r in rows:
        s = r["summary"]
        cells = " | ".join(
            f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in ("auc", "ap", "cp100")
        )
        print(f"| {r['family']} | {r['feature_set']} | {cells} |")


if __name__ == "__main__":
    main()
