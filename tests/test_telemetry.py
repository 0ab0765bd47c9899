"""observe_many equals a loop of observe()."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from serving.telemetry import observe_many


def _samples(h: Histogram) -> dict:
    return {
        (s.name, s.labels.get("le")): s.value
        for m in h.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_matches_observe() -> None:
    buckets = [0.01, 0.1, 0.5, 0.9, 1.0]
    a = Histogram("a_score", "x", buckets=buckets, registry=CollectorRegistry())
    b = Histogram("a_score", "x", buckets=buckets, registry=CollectorRegistry())
    values = np.concatenate([np.random.default_rng(0).random(500), [0.0, 0.01, 0.1, 1.0, 2.0]])
    for v in values:
        a.observe(float(v))
    observe_many(b, values)
    sa, sb = _samples(a), _samples(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert abs(sa[key] - sb[key]) < 1e-9, key
