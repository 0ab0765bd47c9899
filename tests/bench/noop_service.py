"""Benchmark baseline: the fraud API's shape and BentoML settings, doing no work at all.

Its throughput is the framework's own ceiling on this machine; `make bench` compares the
real service with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from serving import bentoml_fixes
from serving.api_models import Prediction, Transaction
from serving.bento_config import BATCHING, MAX_BATCH, service_config, settle_gc
from training.core.config import get_settings

# The same request-path fixes and GC setting as the real service, unless asked to run BentoML
# as shipped (`make bench` runs it both ways: the framework's ceiling, stock and lifted).
STOCK = os.environ.get("NOOP_STOCK") == "1"


@bentoml.service(name="noop_fraud_detector", **service_config(get_settings()))
class NoopFraudService:
    def __init__(self) -> None:
        if get_settings().bentoml_fixes and not STOCK:
            bentoml_fixes.apply(skip=get_settings().skipped_fixes())
        if not STOCK:  # the real service's GC setting after start-up
            settle_gc()

    @bentoml.api(batchable=True, **BATCHING)
    async def predict(
        self,
        transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)],
    ) -> Annotated[list[Prediction], ContentType("application/json")]:
        return answers(transactions, [0.0] * len(transactions), "noop")


def answers(
    transactions: Sequence[Transaction], probabilities: Sequence[float], version: str
) -> list[Prediction]:
    """The response rows of the bench's baselines (every transaction passed)."""
    return [
        Prediction(
            transaction_id=str(t.transaction_id),
            fraud_probability=p,
            is_fraud=False,
            model_version=version,
        )
        for t, p in zip(transactions, probabilities, strict=True)
    ]
