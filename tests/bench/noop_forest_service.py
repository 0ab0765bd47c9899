"""Benchmark baseline: the no-op service plus the champion's compiled forest, and nothing else.

Each batch runs the forest (ONNX Runtime, as the fraud service does) on as many rows as it
holds transactions, cut in turn from feature rows of the bench's traffic; no features, state,
metrics or middleware. Its peak beside the no-op's is the share of the framework's ceiling the
forest alone takes: what is left of a 0.9x budget for everything else the service does.
``make bench`` points ``NOOP_FOREST_ROWS`` at its feature bodies (``f_single.jsonl``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field

from serving import bentoml_fixes
from serving.api_models import Prediction, Transaction
from serving.bento_config import BATCHING, MAX_BATCH, service_config, settle_gc
from serving.model_bundle import ModelBundle
from tests.bench.noop_service import answers
from training.core.compiled import CompiledModel
from training.core.config import get_settings


def feature_matrix(model: CompiledModel, rows_file: Path) -> np.ndarray:
    """The forest's input for every row of a file of ``dataframe_split`` bodies."""
    rows: list[list[object]] = []
    columns: list[str] = []
    with rows_file.open() as f:
        for line in f:
            split = json.loads(line)["dataframe_split"]
            columns = split["columns"]
            rows.extend(split["data"])
    table = np.array(rows, dtype=object)
    frame = {
        c: table[:, i] if c in model.spec.categorical else table[:, i].astype(np.float64)
        for i, c in enumerate(columns)
    }
    return model.matrix(frame)


@bentoml.service(name="noop_forest_fraud_detector", **service_config(get_settings()))
class NoopForestService:
    bento_model = bentoml.models.BentoModel(f"{get_settings().bento_model}:latest")

    def __init__(self) -> None:
        settings = get_settings()
        if settings.bentoml_fixes:
            bentoml_fixes.apply(skip=settings.skipped_fixes())
        bundle = ModelBundle.load(
            Path(self.bento_model.path),
            self.bento_model.info.metadata,
            settings.model_thread_count(),  # as the service: large batches on two threads
        )
        if bundle.compiled is None:
            raise RuntimeError("the champion has no compiled twin: nothing to serve")
        self.model = bundle.compiled
        rows = Path(os.environ.get("NOOP_FOREST_ROWS", "reports/bench-work/f_single.jsonl"))
        self.X = feature_matrix(self.model, rows)
        self.at = 0
        settle_gc()

    @bentoml.api(batchable=True, **BATCHING)
    async def predict(
        self,
        transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)],
    ) -> Annotated[list[Prediction], ContentType("application/json")]:
        n = len(transactions)
        if self.at + n > len(self.X):
            self.at = 0
        X = self.X[self.at : self.at + n]
        self.at += n
        m = self.model
        proba = m.session_for(n).run([m.output_name], {m.input_name: X})[0][:, 1].tolist()
        return answers(transactions, proba, "noop-forest")
