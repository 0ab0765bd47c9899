"""Where a scoring batch's time goes, part by part, in process (warm caches).

Loads the Bento store's latest model, warms its state from the shipped history, then for
batches of ``--size`` transactions cut from the bench's single-transaction bodies times each
part of the request path that is ours or the request model's: validation into ``Transaction``
(from dicts), ``to_record``, the online features, the compiled model, recording the batch with
its decisions. Prints medians in µs per transaction. ``make bench`` writes the bodies first::

    python -m tests.bench.scorer_parts [--size 100] [--bodies reports/bench-work/single.jsonl]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np

from serving.api_models import Transaction
from serving.model_bundle import ModelBundle
from serving.scorer import FraudScorer
from training.core import bento_model
from training.core.config import get_settings

PARTS = ("validate", "to_record", "features", "model", "record")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100, help="transactions per batch")
    ap.add_argument("--bodies", type=Path, default=Path("reports/bench-work/single.jsonl"))
    args = ap.parse_args()
    if not args.bodies.exists():
        raise SystemExit(f"{args.bodies} not found: run `make bench` once to write the bodies")
    model = bento_model.find(get_settings().bento_model)
    bundle = ModelBundle.load(Path(model.path), model.info.metadata)
    if bundle.compiled is None:
        raise SystemExit("this model has no compiled twin: nothing to time for the model part")
    with args.bodies.open() as f:
        raw = [json.loads(line)["transactions"][0] for line in f]
    scorer = FraudScorer(bundle)
    scorer.warm()
    gc.collect()
    gc.freeze()
    features, n = scorer.features, args.size
    costs: dict[str, list[float]] = {part: [] for part in PARTS}
    for k in range(len(raw) // n):
        stamps = [time.perf_counter()]
        txs = [Transaction.model_validate(t) for t in raw[k * n : (k + 1) * n]]
        stamps.append(time.perf_counter())
        batch = [t.to_record() for t in txs]
        stamps.append(time.perf_counter())
        cols = features.compute_columns(batch, True, decided_later=True)
        stamps.append(time.perf_counter())
        proba = bundle.compiled.predict_proba(cols)
        stamps.append(time.perf_counter())
        features.record(batch, (proba >= scorer.threshold).astype(np.int8).tolist())
        stamps.append(time.perf_counter())
        for part, t0, t1 in zip(PARTS, stamps, stamps[1:], strict=False):
            costs[part].append(t1 - t0)
    print(f"{len(raw) // n} batches of {n} transactions, medians in µs per transaction:")
    for part in PARTS:
        print(f"  {part:10s} {statistics.median(costs[part]) / n * 1e6:6.2f}")


if __name__ == "__main__":
    main()
