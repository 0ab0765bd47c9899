"""Cost of the online feature state per scoring batch, in memory vs Redis, in process.

Warms each state with a simulated history (~230,000 transactions), then times what scoring does
with the state for batches of 1, 12 and 100 new transactions: read the histories and compute the
features (``compute_columns(..., decided_later=True)``), then record the decisions. Prints
medians per batch and per transaction::

    python -m tests.bench.state_cost [--redis-url redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from uuid import uuid4

from serving.online_features import OnlineFeatures, new_state, records_from_frame
from serving.redis_state import RedisFeatureState
from training.core import schema
from training.core.features import FeatureConfig
from training.demo.simulate import SimulationConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--batches", type=int, default=60, help="timed batches per size")
    args = ap.parse_args()
    cfg = FeatureConfig()
    raw = schema.normalize(
        simulate(SimulationConfig(n_customers=3000, n_terminals=6000, n_days=45, seed=5))
    )
    records, labels = records_from_frame(raw), raw[schema.TX_FRAUD].tolist()
    sizes = (1, 12, 100)
    cut = len(records) - args.batches * sum(sizes)
    for kind in ("memory", "redis"):
        redis_state = None
        if kind == "redis":
            redis_state = RedisFeatureState.from_url(
                args.redis_url,
                cfg.customer_retention_ms,
                cfg.terminal_retention_ms,
                f"bench-{uuid4().hex[:8]}",
            )
        online = OnlineFeatures(redis_state or new_state(cfg), cfg, categorical=True)
        try:
            t0 = time.perf_counter()
            online.ingest(records[:cut], labels[:cut])
            print(f"{kind}: warmed with {cut:,} transactions in {time.perf_counter() - t0:.2f} s")
            i = cut
            for n in sizes:
                costs = []
                for _ in range(args.batches):
                    batch = records[i : i + n]
                    i += n
                    t0 = time.perf_counter()
                    online.compute_columns(batch, True, decided_later=True)
                    online.record(batch, [0] * n)
                    costs.append(time.perf_counter() - t0)
                us = statistics.median(costs) * 1e6
                print(f"{kind}: {n:>3} tx  {us:8.0f} µs/batch  {us / n:6.1f} µs/tx (median)")
        finally:
            if redis_state is not None:
                redis_state.clear()


if __name__ == "__main__":
    main()
