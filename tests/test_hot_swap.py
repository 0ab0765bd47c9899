"""FraudScorer.swap: the model changes between batches, the online state stays."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import bentoml
import pytest

from serving.api_models import request_bodies
from serving.online_features import records_from_frame
from serving.scorer import FraudScorer, ModelBundle, SwapError


@pytest.fixture
def bundle(champion) -> ModelBundle:
    model = bentoml.models.get(champion["imported"].tag)
    return ModelBundle.load(Path(model.path), model.info.metadata)


def test_swap_keeps_state_and_labels_batches_with_their_version(bundle, small_raw) -> None:
    scorer = FraudScorer(bundle, drift_window=500)
    scorer.warm()
    fresh = small_raw.tail(50).assign(TRANSACTION_ID=lambda d: "swap-" + d["TRANSACTION_ID"])
    records = records_from_frame(fresh)  # ids the warm-up history does not have
    first = scorer.score(records[:25])
    assert first.version == bundle.metadata["mlflow_model_version"]
    state_before = scorer.features.state.stats()["transactions"]
    newer = dataclasses.replace(bundle, metadata={**bundle.metadata, "mlflow_model_version": "99"})
    previous = scorer.swap(newer)
    assert previous == first.version
    second = scorer.score(records[25:])
    assert second.version == "99" and scorer.model_version == "99"
    assert scorer.features.state.stats()["transactions"] == state_before + 25  # state kept
    assert scorer.drift is not None and scorer.drift.filled == 25  # a new window per model


def test_swap_refuses_another_feature_configuration(bundle) -> None:
    scorer = FraudScorer(bundle)
    info = {**bundle.info, "feature_config": {**bundle.info["feature_config"], "windows": [1, 7]}}
    with pytest.raises(SwapError, match="feature configuration"):
        scorer.swap(dataclasses.replace(bundle, info=info))
    assert scorer.model_version == bundle.metadata["mlflow_model_version"]


def test_request_bodies_round_trip_through_the_scorer(bundle, small_raw) -> None:
    from serving.api_models import Transaction

    scorer = FraudScorer(bundle)
    bodies = request_bodies(small_raw.tail(5))
    scored = scorer.score([Transaction.model_validate(b).to_record() for b in bodies])
    assert len(scored.proba) == 5 and ((scored.proba >= 0) & (scored.proba <= 1)).all()


def test_hot_swap_loads_from_the_bento_store_and_counts_outcomes(bundle, champion) -> None:
    """HotSwap (what /admin/reload calls): an imported version is loaded and served; a version
    the store lacks is a LookupError, the served model stays, and both outcomes are counted."""
    from serving import telemetry as tm
    from serving.hot_swap import HotSwap

    def swaps(outcome: str) -> float:
        return tm.MODEL_SWAPS.labels(outcome)._value.get()

    settings = champion["settings"]
    serving_v0 = {**bundle.metadata, "mlflow_model_version": "0"}
    scorer = FraudScorer(dataclasses.replace(bundle, metadata=serving_v0))
    swapper = HotSwap(scorer, settings.bento_model, threads=1)
    ok, failed = swaps("ok"), swaps("failed")
    answer = swapper.swap_to(champion["imported"].mlflow_version)
    assert answer["previous_version"] == "0"
    assert answer["model_version"] == scorer.model_version == champion["imported"].mlflow_version
    assert answer["bento_model"] == str(champion["imported"].tag)
    with pytest.raises(LookupError, match="12345"):
        swapper.swap_to("12345")
    assert scorer.model_version == champion["imported"].mlflow_version
    assert (swaps("ok"), swaps("failed")) == (ok + 1, failed + 1)
