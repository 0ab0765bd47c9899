"""/explain: reason codes for transactions scored now (recording nothing) and for decisions
in the decision log, from the features the model scored (exact tree SHAP, training/core/explain.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.decision_log import DecisionLog
from serving.model_bundle import ModelBundle, feature_config
from serving.online_features import TxRecord
from serving.scorer import FraudScorer
from training.core import bento_model, explain

KEEP_MODELS = 3  # past versions kept loaded for GET /explain/{id}


class NotExplainable(LookupError):
    """A logged transaction that cannot be explained (never scored, or its model is gone)."""


class ReasonCodes:
    """Explains with the served model, or with the model a logged decision was made by."""

    def __init__(
        self,
        scorer: FraudScorer,
        bento_model_name: str,
        decisions: DecisionLog | None,
    ) -> None:
        self.scorer = scorer
        self.bento_model_name = bento_model_name
        self.decisions = decisions
        self.past: OrderedDict[str, ModelBundle] = OrderedDict()
        self.lock = threading.Lock()

    def explain_new(self, batch: Sequence[TxRecord], k: int) -> list[dict[str, Any]]:
        """Score and explain as /predict would answer now; nothing is recorded (StateUnavailable,
        AlreadyScored from the scorer)."""
        scored, bundle = self.scorer.preview(batch)
        cols = scored.columns or {}
        explained = _explainer(bundle).explain(cols)
        threshold = float(bundle.info["threshold"])
        return [
            self._answer(
                r.transaction_id,
                float(scored.proba[i]),
                bool(scored.flagged[i]),
                scored.version,
                threshold,
                bundle,
                explained,
                i,
                {c: _scalar(cols[c][i]) for c in explained.columns},
                k,
                recorded=False,
                degraded=False,
            )
            for i, r in enumerate(batch)
        ]

    def explain_logged(self, transaction_id: str, k: int) -> dict[str, Any]:
        """Explain a decision in the log from its logged feature vector, with the model that
        made it. LookupError: not logged (yet); NotExplainable: no vector or no model."""
        if self.decisions is None:
            raise LookupError("the decision log is off (FRAUD_DECISION_LOG=false)")
        row = self.decisions.logged_decision(transaction_id)
        if row is None:
            raise LookupError(
                f"transaction {transaction_id!r} is not in the decision log (a decision reaches "
                "the store within a second of its answer)"
            )
        if row.get("features") is None:
            raise NotExplainable(
                f"transaction {transaction_id!r} was sent to /feedback as a labelled record: "
                "it was never scored here"
            )
        bundle = self._bundle(str(row["model_version"]), str(row["model_name"]))
        columns = list(bundle.info["feature_columns"])
        vector: Mapping[str, Any] = row["features"]
        missing = [c for c in columns if c not in vector]
        if missing:
            raise NotExplainable(f"the logged vector lacks the model's features {missing}")
        explained = _explainer(bundle).explain({c: [vector[c]] for c in columns})
        return self._answer(
            transaction_id,
            float(row["probability"]),
            bool(row["is_fraud"]),
            str(row["model_version"]),
            float(row["threshold"]),
            bundle,
            explained,
            0,
            {c: vector[c] for c in columns},
            k,
            recorded=True,
            degraded=bool(row["degraded"]),
        )

    def _bundle(self, version: str, registered_model: str) -> ModelBundle:
        """The served model when it made the decision, else that version from the Bento store."""
        if version == self.scorer.model_version:
            return self.scorer.bundle
        with self.lock:
            if version in self.past:
                self.past.move_to_end(version)
                return self.past[version]
            try:
                model = bento_model.find(self.bento_model_name, version, registered_model)
            except LookupError as exc:
                raise NotExplainable(
                    f"model version {version} made this decision and is not in the Bento store "
                    f"any more: {exc}"
                ) from exc
            bundle = ModelBundle.load(Path(model.path), model.info.metadata)
            self.past[version] = bundle
            while len(self.past) > KEEP_MODELS:
                self.past.popitem(last=False)
            return bundle

    def _answer(
        self,
        transaction_id: str,
        proba: float,
        flagged: bool,
        version: str,
        threshold: float,
        bundle: ModelBundle,
        explained: explain.Explanations,
        i: int,
        row: dict[str, Any],
        k: int,
        *,
        recorded: bool,
        degraded: bool,
    ) -> dict[str, Any]:
        return {
            "transaction_id": transaction_id,
            "fraud_probability": proba,
            "is_fraud": flagged,
            "model_version": version,
            "threshold": threshold,
            "base_value": explained.base_value,
            "model_output": float(explained.output[i]),
            "output_space": explained.space,
            "recorded": recorded,
            "degraded": degraded,
            "reasons": explain.top_reasons(
                explained.contributions[i],
                row,
                explained.columns,
                k,
                feature_config(bundle.info).delay_days,
            ),
        }


def _explainer(bundle: ModelBundle) -> explain.ForestExplainer:
    try:
        return bundle.explainer()
    except explain.UnsupportedModel as exc:
        raise NotExplainable(str(exc)) from exc


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
