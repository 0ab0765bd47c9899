"""Benchmark baseline in the seed's style: FastAPI + uvicorn, one request at a time, the
scikit-learn pipeline (no batching, no compiled model), the same online features.

    BENTO_MODEL_PATH=... uvicorn tests.bench.fastapi_seed:app --port 8092
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import bentoml
from fastapi import FastAPI
from pydantic import BaseModel, Field

from serving.api_models import Prediction, Transaction
from serving.model_bundle import ModelBundle
from serving.scorer import FraudScorer


class PredictRequest(BaseModel):
    transactions: list[Transaction] = Field(min_length=1, max_length=1000)


model = bentoml.models.get(os.environ.get("BENTO_MODEL_TAG", "fraud_detector:latest"))
bundle = ModelBundle.load(Path(model.path), model.info.metadata)
bundle = dataclasses.replace(bundle, compiled=None)  # the seed scores with scikit-learn
scorer = FraudScorer(bundle)
scorer.warm()
app = FastAPI()


@app.post("/predict")
def predict(req: PredictRequest) -> list[Prediction]:
    scored = scorer.score([t.to_record() for t in req.transactions])
    proba, flagged = scored.proba, scored.flagged
    return [
        Prediction(
            transaction_id=str(t.transaction_id),
            fraud_probability=p,
            is_fraud=f,
            model_version=scorer.model_version,
        )
        for t, p, f in zip(req.transactions, proba.tolist(), flagged.tolist(), strict=True)
    ]


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ok"}
