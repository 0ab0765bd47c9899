"""FraudScorer.swap: the model changes between batches, the online state stays."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from serving.model_bundle import ModelBundle
from serving.online_features import records_from_frame
from serving.scorer import FraudScorer, SwapError
from training.core.schema import request_bodies

from .servers import PROJECT


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
    from training.core import bento_model

    assert bento_model.served_tag(settings.bento_model) == str(champion["imported"].tag)


def test_a_restart_serves_the_pinned_version_not_the_latest(tmp_path) -> None:
    """Two imports (v1, then v2 = the store's latest); rolled back to v1 (pinned): a starting
    service takes v1. A pin the store lacks falls back to the latest."""
    code = (
        "import bentoml\n"
        "from training.core import bento_model\n"
        "tags = []\n"
        "for v in ('1', '2'):\n"
        "    with bentoml.models.create('m', metadata={'mlflow_model_version': v}) as m:\n"
        "        tags.append(str(m.tag))\n"
        "assert bento_model.served_tag('m') == 'm:latest'\n"
        "bento_model.pin('m', tags[0])\n"
        "assert bento_model.served_tag('m') == tags[0], bento_model.served_tag('m')\n"
        "bento_model.pin('m', 'm:gone')\n"
        "assert bento_model.served_tag('m') == 'm:latest'\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "BENTOML_HOME": str(tmp_path)},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_resent_transaction_gets_its_first_answer(bundle, small_raw, make_state) -> None:
    """Scored once, then the customer's history moves on and the model is swapped: sent again
    (even with another amount), the transaction gets its first probability, decision and
    version, and is not recorded twice; in a mixed batch only the re-sent ones are replayed."""
    from serving.model_bundle import feature_config

    cfg = feature_config(bundle.info)
    scorer = FraudScorer(
        bundle, state=make_state(cfg.customer_retention_ms, cfg.terminal_retention_ms)
    )
    fresh = small_raw.tail(60).assign(TRANSACTION_ID=lambda d: "re-" + d["TRANSACTION_ID"])
    records = records_from_frame(fresh)
    first = scorer.score(records[:20])
    assert first.replayed == () and first.versions is None
    scorer.score(records[20:50])  # the same customers' and terminals' histories grow
    scorer.swap(
        dataclasses.replace(bundle, metadata={**bundle.metadata, "mlflow_model_version": "7"})
    )
    changed = [r._replace(amount_cents=r.amount_cents * 9) for r in records[:20]]
    again = scorer.score(changed)
    assert again.replayed == tuple(range(20))
    assert again.proba.tolist() == first.proba.tolist()
    assert again.flagged.tolist() == first.flagged.tolist()
    assert again.versions == [first.version] * 20 and again.version == "7"
    mixed = scorer.score([records[50], records[3], records[51], records[7]])
    assert mixed.replayed == (1, 3)
    assert mixed.versions == ["7", first.version, "7", first.version]
    assert mixed.proba[1] == first.proba[3] and mixed.proba[3] == first.proba[7]
    assert scorer.score([records[50]]).proba[0] == mixed.proba[0]  # a new answer is kept too
