"""The offline feature pass on Spark: THE feature definition (:mod:`training.core.features`),
run per group. Each side of the aggregates reads only its entity's own transactions, so:

1. grouped by terminal, :func:`~training.core.features.terminal_windows` adds the terminal's
   delayed window counts and known frauds to each row;
2. grouped by customer, :func:`~training.core.features.customer_windows` adds the customer's
   side, and :func:`~training.core.features.feature_columns` turns the whole aggregates into
   the model's features.

Point-in-time exact: inside a group, rows are in stream order (time, then the source file and
the row within it, as the local loader orders them), so ties in time break the same way.
No feature is written a second time in Spark SQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.core import schema
from training.core.features import (
    FeatureConfig,
    customer_windows,
    empty_aggregates,
    feature_columns,
    feature_names,
    terminal_windows,
    to_cents,
    to_ms,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

FILE, ROW = "_FILE", "_ROW"  # a row's place in its source: the stream order's tie-break
ORDER = [schema.TX_DATETIME, FILE, ROW]


def _term_cols(cfg: FeatureConfig) -> list[str]:
    return [f"_TERM_{what}_{w}" for what in ("COUNT", "FRAUDS") for w in cfg.windows]


def _in_order(pdf: pd.DataFrame) -> pd.DataFrame:
    return pdf.sort_values(ORDER, kind="stable", ignore_index=True)


def _terminal_side(cfg: FeatureConfig) -> object:
    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = _in_order(pdf)
        agg = empty_aggregates(to_ms(pdf[schema.TX_DATETIME]), to_cents(pdf[schema.TX_AMOUNT]), cfg)
        terminal_windows(
            agg, np.zeros(len(pdf), dtype=np.int64), pdf[schema.TX_FRAUD].to_numpy(), cfg
        )
        k = len(cfg.windows)
        for i, name in enumerate(_term_cols(cfg)):
            block = agg.term_count if i < k else agg.term_frauds
            pdf[name] = block[i % k]
        return pdf

    return run


def _customer_side(cfg: FeatureConfig, categorical: bool, kept: list[str]) -> object:
    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = _in_order(pdf)
        agg = empty_aggregates(to_ms(pdf[schema.TX_DATETIME]), to_cents(pdf[schema.TX_AMOUNT]), cfg)
        k = len(cfg.windows)
        cols = _term_cols(cfg)
        agg.term_count = pdf[cols[:k]].to_numpy(dtype=np.int64).T.copy()
        agg.term_frauds = pdf[cols[k:]].to_numpy(dtype=np.int64).T.copy()
        customer_windows(agg, np.zeros(len(pdf), dtype=np.int64), cfg)
        cats = {c: pdf[c].to_numpy() for c in schema.CATEGORICAL_COLUMNS} if categorical else None
        out = pd.DataFrame(feature_columns(agg, cfg, cats))
        for c in reversed(kept):
            out.insert(0, input_name(c) if c in out.columns else c, pdf[c].to_numpy())
        return out

    return run


def input_name(column: str) -> str:
    """The output name of an input column that a feature shares its name with (TX_AMOUNT)."""
    return f"_IN_{column}"


def features(sdf: DataFrame, cfg: FeatureConfig | None = None, order: bool = False) -> DataFrame:
    """Every input column and every feature, for every transaction of ``sdf`` (the normalised
    columns plus FILE and ROW, as :mod:`training.spark.sources` reads them; those two only
    with ``order``). An input column a feature shares its name with is kept as
    :func:`input_name`."""
    from pyspark.sql import types as T

    cfg = cfg or FeatureConfig()
    categorical = all(c in sdf.columns for c in schema.CATEGORICAL_COLUMNS)
    names = feature_names(cfg, categorical)
    kept = [c for c in sdf.columns if order or c not in (FILE, ROW)]
    by_terminal = sdf.groupBy(schema.TERMINAL_ID).applyInPandas(
        _terminal_side(cfg),  # type: ignore[arg-type]
        T.StructType(
            sdf.schema.fields + [T.StructField(c, T.LongType(), False) for c in _term_cols(cfg)]
        ),
    )
    out_schema = T.StructType(
        [T.StructField(input_name(c) if c in names else c, sdf.schema[c].dataType) for c in kept]
        + [
            T.StructField(n, T.StringType() if n in schema.CATEGORICAL_COLUMNS else T.DoubleType())
            for n in names
        ]
    )
    return by_terminal.groupBy(schema.CUSTOMER_ID).applyInPandas(
        _customer_side(cfg, categorical, kept),  # type: ignore[arg-type]
        out_schema,
    )
