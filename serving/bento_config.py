"""BentoML settings of the fraud service and of its benchmark baselines: the service
configuration, adaptive batching, and the serving worker's garbage-collector settings."""

from __future__ import annotations

import gc
from typing import Any

from training.core.config import Settings

# Adaptive batching. Measured here (2 cores, compiled 100-tree forest): inside the busy server,
# where a batch meets cold CPU caches, scoring costs about 0.4 ms + 30 us per transaction
# (`make bench`, last lines), so even the largest batch (1,000 transactions, the request
# limit) takes ~30 ms.
# max_batch_size=1000 lets one call absorb many concurrent requests; max_latency_ms is a hard
# deadline in BentoML (requests that would miss it get 503), so it is set well above the
# worst measured batch cost plus queueing at peak load (p99 < 0.15 s at 1,300 req/s).
MAX_BATCH = 1000
MAX_LATENCY_MS = 1000
BATCHING = {"max_batch_size": MAX_BATCH, "max_latency_ms": MAX_LATENCY_MS}


# Young-generation collections every 50,000 net allocations instead of 700: requests make many
# short-lived objects, nearly all freed by reference counting, so frequent young passes are
# mostly wasted. Measured with `python -m tests.bench.ab` (wrk -c32, single transactions): CPU
# per request 419 -> 381 and 420 -> 405 µs in two interleaved runs; p99 under hey's 500 req/s
# bursts unchanged (26.5-31.2 ms against 24.1-32.3 ms with the default).
GC_THRESHOLDS = (50_000, 50, 1_000)


def settle_gc() -> None:
    """Once start-up (model load, state warm-up) is done: collect, freeze what survived so full
    passes never walk it again (they stalled the loop ~0.3 s over the warmed state), and collect
    the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def service_config(settings: Settings) -> dict[str, Any]:
    """``@bentoml.service`` settings shared by the service and its benchmark baselines."""
    return {
        # The in-memory feature state is per process: one worker unless the state is in Redis.
        "workers": settings.workers,
        "traffic": {"timeout": 30},
        # Per-request work we do not use (py-spy under load, see docs/performance.md): no
        # tracing spans on the scoring routes, no access-log line per request by default.
        "tracing": {"excluded_urls": ["/predict", "/feedback", "/metrics", "/readyz", "/livez"]},
        "logging": {"access": {"enabled": settings.access_log}},
        "http": {"port": settings.port},  # host comes from `--host` (fraudops serve: 127.0.0.1)
    }
