"""Training on the weighted sample against training on everything, on the handbook protocol:
for each genuine fraction, each fold's model is fitted on the sample of its training week
(every fraud, that share of each day's genuine, weighted back: training.sampling) and scored
on the WHOLE test week; AP, AUC and CP@100 mean ± standard error over the folds, as a
markdown table (docs/model.md quotes it).

    fraudops simulate --out data/full          # the handbook's scale: 5,000 customers, 183 days
    python -m tests.bench.sample_quality --data data/full/transactions --train-start 2018-08-15
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import numpy as np

from training import data, evaluate, metrics, sampling
from training.core import features, schema
from training.train import Candidate, build_pipeline

CANDIDATES = {
    "random forest, no balancing (weighted)": Candidate(n_estimators=100, max_depth=20),
    "random forest, class_weight": Candidate(
        balancing="class_weight", n_estimators=100, max_depth=20
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/full/transactions"))
    ap.add_argument("--train-start", type=date.fromisoformat, default=None)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1, 0.05])
    args = ap.parse_args()

    raw = data.load_transactions(args.data)
    feats = features.offline_features(raw)
    categorical = features.has_categoricals(raw)
    X = feats[features.feature_names(features.FeatureConfig(), categorical)]
    y = raw[schema.TX_FRAUD].to_numpy()
    days = data.day_index(raw)
    last = int(days.max())
    start = (
        evaluate.first_day_of(raw, args.train_start, 21, last) if args.train_start else last - 20
    )
    splits = data.prequential_splits(raw, days, start, args.folds)
    customers = raw[schema.CUSTOMER_ID].to_numpy()
    on_day = raw[schema.TX_DATETIME].dt.normalize().to_numpy()
    print(f"{len(raw):,} transactions, {len(splits)} folds, test weeks from day {start + 14}")
    print("| candidate | genuine kept | training rows | AP | AUC | CP@100 | ΔAP | fit s |")
    print("|---|---:|---:|---|---|---|---:|---:|")
    for label, cand in CANDIDATES.items():
        full_ap = None
        for fraction in args.fractions:
            per_fold: dict[str, list[float]] = {"ap": [], "auc": [], "cp100": []}
            rows, fit_s = 0, 0.0
            for split in splits:
                tr = split.train
                kept = sampling.keep(y[tr], raw[schema.TRANSACTION_ID].to_numpy()[tr], fraction)
                tr = tr[kept]
                w = sampling.row_weights(
                    y[tr],
                    on_day[tr],
                    sampling.day_weights(
                        sampling.genuine_per_day(y[split.train], on_day[split.train]),
                        sampling.genuine_per_day(y[tr], on_day[tr]),
                    ),
                )
                pipe = build_pipeline(cand, categorical)
                fit = {"forest__sample_weight": w} if cand.balancing == "none" else {}
                t0 = time.perf_counter()
                pipe.fit(X.iloc[tr], y[tr], **fit)
                fit_s += time.perf_counter() - t0
                rows += len(tr)
                te = split.test
                scores = pipe.predict_proba(X.iloc[te])[:, 1]
                m = metrics.ranking_metrics(y[te], scores, days[te], customers[te])
                for k in per_fold:
                    per_fold[k].append(m[k])

            def cell(k: str, vals: dict[str, list[float]] = per_fold) -> str:
                a = np.array(vals[k])
                return f"{a.mean():.3f} ± {a.std() / np.sqrt(len(a)):.3f}"

            ap_mean = float(np.mean(per_fold["ap"]))
            full_ap = ap_mean if full_ap is None else full_ap
            print(
                f"| {label} | {fraction:g} | {rows // len(splits):,} | {cell('ap')} | "
                f"{cell('auc')} | {cell('cp100')} | {ap_mean - full_ap:+.3f} | "
                f"{fit_s / len(splits):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
