"""The hold-out scored across the cluster: the compiled models (ONNX bytes, a few MB) are
broadcast once, each executor builds its ONNX Runtime sessions once per Python worker, and
``mapInPandas`` turns every transaction of the test days into (day, customer, label, scores).
Only those narrow rows come back to the driver (:func:`training.holdout.exact` computes the
metrics on all of them)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from training.core import compiled, schema
from training.holdout import CUSTOMER, DAY, LABEL, ModelFiles, score_column, scored_batch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_LOADED: dict[str, compiled.CompiledModel] = {}  # per Python worker: key -> ONNX sessions


def _model(onnx: bytes, spec: compiled.InputSpec) -> compiled.CompiledModel:
    key = hashlib.sha256(onnx).hexdigest()
    if key not in _LOADED:
        _LOADED[key] = compiled.CompiledModel(onnx, spec)
    return _LOADED[key]


@dataclass(frozen=True)
class ClusterScorer:
    """The window's feature rows on the cluster (persisted by the caller)."""

    frame: DataFrame

    def score(
        self, models: Sequence[ModelFiles], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        sdf = self.frame
        day = F.to_date(sdf[schema.TX_DATETIME])
        rows = sdf.where((day >= F.lit(first.date())) & (day <= F.lit(last.date())))
        shared = sdf.sparkSession.sparkContext.broadcast(list(models))

        def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            loaded = [_model(onnx, spec) for onnx, spec in shared.value]
            for pdf in batches:
                yield scored_batch(pdf, loaded, schema.CUSTOMER_ID, schema.TX_FRAUD)

        out = T.StructType(
            [
                T.StructField(DAY, T.TimestampNTZType()),
                T.StructField(CUSTOMER, T.StringType()),
                T.StructField(LABEL, T.LongType()),
            ]
            + [T.StructField(score_column(i), T.DoubleType()) for i in range(len(models))]
        )
        try:
            return rows.mapInPandas(run, out).toPandas()
        finally:
            shared.unpersist()
