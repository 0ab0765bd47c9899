"""Live challengers in process: shadow leaves every answer alone, a canary answers its share of
customers, labels count live precision per model and arm, a bad canary rolls back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest

from serving import challenger as ch
from serving.model_bundle import ModelBundle
from serving.online_features import records_from_frame
from serving.scorer import FraudScorer, SwapError
from training import train
from training.data import handbook_layout


@pytest.fixture(scope="module")
def champion_bundle(champion) -> ModelBundle:
    model = bentoml.models.get(champion["imported"].tag)
    return ModelBundle.load(Path(model.path), model.info.metadata)


@pytest.fixture(scope="module")
def bad_bundle(champion_bundle: ModelBundle, small_raw, small_feats) -> ModelBundle:
    """A challenger worse on purpose: trained on shuffled labels (no pipeline compiled)."""
    columns = champion_bundle.info["feature_columns"]
    layout = handbook_layout(small_raw, n_folds=1)
    rows = layout.final.train
    shuffled = np.random.default_rng(3).permutation(small_raw["TX_FRAUD"].to_numpy()[rows])
    pipe = train.build_pipeline(train.Candidate(n_estimators=10, max_depth=6), True)
    pipe.fit(small_feats[columns].iloc[rows], shuffled)
    scores = pipe.predict_proba(small_feats[columns].iloc[layout.final.test])[:, 1]
    threshold = float(np.quantile(scores, 0.9))  # flags a tenth of the transactions
    return dataclasses.replace(
        champion_bundle,
        info={**champion_bundle.info, "threshold": threshold},
        metadata={**champion_bundle.metadata, "mlflow_model_version": "bad-2"},
        compiled=None,
        _pipeline=pipe,
        _explainer=None,
    )


def stream(small_raw: pd.DataFrame, tag: str, n: int = 2_000) -> pd.DataFrame:
    """The small set's last transactions under new ids (the warm-up history has the old)."""
    return small_raw.tail(n).assign(TRANSACTION_ID=lambda d: f"{tag}-" + d["TRANSACTION_ID"])


def policy(**kw) -> ch.RollbackPolicy:
    return ch.RollbackPolicy(**{"min_labels": 10, **kw})


def test_customers_fall_in_the_canary_by_a_stable_hash() -> None:
    ids = [f"c{i}" for i in range(20_000)]
    picked = [c for c in ids if ch.in_canary(c, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert picked == [c for c in ids if ch.in_canary(c, 0.1)]  # the same every time
    assert set(picked) <= {c for c in ids if ch.in_canary(c, 0.3)}  # a larger share keeps them


def test_shadow_changes_no_answer_and_counts_both_models(
    champion_bundle, bad_bundle, small_raw
) -> None:
    records = records_from_frame(stream(small_raw, "shadow"))
    alone, shadowed = FraudScorer(champion_bundle), FraudScorer(champion_bundle)
    alone.warm()
    shadowed.warm()
    shadow = ch.Challenger(bad_bundle, "shadow", 1.0, policy(), alone.model_version)
    shadowed.set_challenger(shadow)
    for k in range(0, len(records), 100):
        a, b = alone.score(records[k : k + 100]), shadowed.score(records[k : k + 100])
        np.testing.assert_array_equal(a.proba, b.proba)  # answers unchanged
        assert b.versions is None and b.challenged is not None
        assert set(b.challenged.arms) == {"champion"}
        assert set(b.challenged.other_versions) == {"bad-2"}
        theirs = bad_bundle.pipeline.predict_proba(
            pd.DataFrame({c: b.columns[c] for c in shadow.columns})  # type: ignore[index]
        )[:, 1]
        np.testing.assert_allclose(b.challenged.other_proba, theirs, atol=1e-12)
    assert sum(shadow.agreement.values()) == len(records)
    truth = {
        r.transaction_id: int(y)
        for r, y in zip(records, small_raw.tail(2_000)["TX_FRAUD"], strict=True)
    }
    shadowed.feedback(truth)
    live = shadow.models
    assert live["champion"].tp + live["champion"].fn == sum(truth.values())
    assert sum(live["challenger"].__dict__.values()) == len(truth)
    assert live["champion"].precision > live["challenger"].precision  # the bad one is worse
    assert shadow.active  # a shadow never rolls back: it answers nothing


def test_a_canary_answers_its_customers_with_its_version(
    champion_bundle, bad_bundle, small_raw
) -> None:
    records = records_from_frame(stream(small_raw, "canary"))
    scorer = FraudScorer(champion_bundle)
    scorer.warm()
    canary = ch.Challenger(bad_bundle, "canary", 0.3, policy(min_labels=10**9), "1")
    scorer.set_challenger(canary)
    arms: dict[str, str] = {}
    for k in range(0, len(records), 100):
        batch = records[k : k + 100]
        scored = scorer.score(batch)
        assert scored.challenged is not None
        for i, r in enumerate(batch):
            arm = scored.challenged.arms[i]
            assert arm == ("canary" if ch.in_canary(r.customer_id, 0.3) else "champion")
            assert arms.setdefault(r.customer_id, arm) == arm  # a customer stays in one arm
            version = (scored.versions or [scored.version] * len(batch))[i]
            assert version == ("bad-2" if arm == "canary" else scored.version)
            assert scored.flagged[i] == (scored.proba[i] >= scored.challenged.thresholds[i])
            if arm == "canary":  # the champion's score stays beside it, as the shadow
                assert scored.challenged.other_versions[i] == scored.version
    assert 0.15 < sum(a == "canary" for a in arms.values()) / len(arms) < 0.45
    # a re-sent canary transaction gets its first answer, with the canary's version
    resend = [r for r in records[:200] if arms[r.customer_id] == "canary"][:3]
    again = scorer.score(resend)
    assert again.versions == ["bad-2"] * len(resend)


def test_a_worse_canary_rolls_back_on_live_precision(
    champion_bundle, bad_bundle, small_raw
) -> None:
    frame = stream(small_raw, "rollback", 3_000)
    records = records_from_frame(frame)
    truth = dict(zip(frame["TRANSACTION_ID"], frame["TX_FRAUD"].astype(int), strict=True))
    scorer = FraudScorer(champion_bundle)
    scorer.warm()
    canary = ch.Challenger(bad_bundle, "canary", 0.5, policy(min_labels=10), "1")
    scorer.set_challenger(canary)
    for k in range(0, len(records), 100):
        batch = records[k : k + 100]
        scorer.score(batch)
        scorer.feedback({r.transaction_id: truth[r.transaction_id] for r in batch})
        if not canary.active:
            break
    assert canary.rolled_back is not None and "live precision" in canary.rolled_back
    arms = canary.arms
    assert arms["canary"].labels.alerts >= 10 and arms["champion"].labels.alerts >= 10
    assert (arms["canary"].labels.precision or 0) < (arms["champion"].labels.precision or 0) - 0.1
    # from then on the champion answers everyone
    after = scorer.score(records_from_frame(stream(small_raw, "after", 300)))
    assert after.challenged is None and after.versions is None


def test_the_policy_rolls_back_on_errors_and_model_time() -> None:
    p = ch.RollbackPolicy(min_labels=5, precision_margin=0.1, error_margin=0.01,
                          latency_ratio=2.0)  # fmt: skip
    champ, canary = ch.ArmStats(attempted=10_000, batches=300, seconds=0.3), ch.ArmStats()
    assert p.verdict(champ, canary) is None
    canary.attempted, canary.errors = 200, 3  # 1.5 % errors against none
    assert "error rate" in (p.verdict(champ, canary) or "")
    canary.errors = 1  # 0.5 %: inside the margin
    assert p.verdict(champ, canary) is None
    canary.batches, canary.seconds = 300, 0.9  # 3 ms a batch against 1 ms
    assert "model time" in (p.verdict(champ, canary) or "")
    canary.seconds = 0.5
    assert p.verdict(champ, canary) is None
    champ.labels = ch.Confusion(tp=8, fp=2)
    canary.labels = ch.Confusion(tp=3, fp=2)  # 0.6 against 0.8
    assert "live precision" in (p.verdict(champ, canary) or "")
    canary.labels = ch.Confusion(tp=2, fp=2)  # 4 alerts: too few to judge
    assert p.verdict(champ, canary) is None


def test_promoting_the_challenger_is_a_swap_and_ends_it(champion_bundle, bad_bundle) -> None:
    scorer = FraudScorer(champion_bundle)
    canary = ch.Challenger(bad_bundle, "canary", 0.5, policy(), scorer.model_version)
    scorer.set_challenger(canary)
    scorer.swap(bad_bundle)
    assert scorer.model_version == "bad-2" and scorer.challenger is None
    other = ch.Challenger(champion_bundle, "shadow", 1.0, policy(), "bad-2")
    scorer.set_challenger(other)
    newer = dataclasses.replace(
        champion_bundle, metadata={**champion_bundle.metadata, "mlflow_model_version": "7"}
    )
    scorer.swap(newer)  # another version: the challenger stays, beside the new champion
    assert scorer.challenger is other and other.champion_version == "7"
    info = {**bad_bundle.info, "feature_config": {**bad_bundle.info["feature_config"],
                                                  "windows": [1, 7]}}  # fmt: skip
    odd = dataclasses.replace(bad_bundle, info=info)
    with pytest.raises(SwapError, match="feature configuration"):
        scorer.set_challenger(ch.Challenger(odd, "shadow", 1.0, policy(), "7"))
    assert scorer.challenger is other


def duel_frames(better: bool, n: int = 4_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled transactions the champion v1 answered and a challenger v2 shadowed (half) or
    answered as a canary (the other half, v1 behind it); v2 ranks the frauds better or worse."""
    rng = np.random.default_rng(11)
    y = (rng.random(n) < 0.05).astype(int)
    good = np.clip(y * 0.6 + rng.random(n) * 0.5, 0, 1)
    poor = np.clip(y * 0.1 + rng.random(n) * 0.9, 0, 1)
    v1, v2 = (poor, good) if better else (good, poor)
    ids = [f"d{i}" for i in range(n)]
    raw = pd.DataFrame({
        "TRANSACTION_ID": ids,
        "TX_DATETIME": pd.Timestamp("2018-07-01") + pd.to_timedelta(np.arange(n) * 300, "s"),
        "CUSTOMER_ID": [str(i % 700) for i in range(n)],
        "TX_FRAUD": y,
    })  # fmt: skip
    canary = np.arange(n) % 2 == 1
    answers = pd.DataFrame(
        {
            "model_version": np.where(canary, "2", "1"),
            "probability": np.where(canary, v2, v1),
            "is_fraud": np.where(canary, v2, v1) >= 0.5,
            "degraded": False,
            "arm": np.where(canary, "canary", "champion"),
            "shadow_version": np.where(canary, "1", "2"),
            "shadow_probability": np.where(canary, v1, v2),
            "shadow_is_fraud": np.where(canary, v1, v2) >= 0.5,
        },
        index=ids,
    )
    return raw, answers


@pytest.mark.parametrize("better", [True, False])
def test_the_performance_check_proposes_a_challenger_better_on_live_labels(better: bool) -> None:
    """The DAG's performance check: the champion and a live challenger on the labelled
    transactions both scored, judged by the promotion gate's rule."""
    from training import champion_check
    from training.core.config import Settings

    raw, answers = duel_frames(better)
    duels = champion_check._duels(raw.set_index("TRANSACTION_ID"), answers, "1", Settings())
    duel = duels["2"]
    assert duel["n"] == len(raw) and duel["canary"] == duel["shadow"] == len(raw) // 2
    assert duel["frauds"] == int(raw["TX_FRAUD"].sum())
    champ, chall = duel["champion"], duel["challenger"]
    assert (chall["ap"] > champ["ap"]) == better
    assert duel["promote"] == better, duel["reason"]
    assert {"precision", "recall", "auc", "ap", "cp100"} <= set(chall)


def test_a_slow_canary_rolls_back_on_model_time(champion_bundle, bad_bundle, small_raw) -> None:
    """Worse on purpose: a canary whose model sleeps 2 ms a batch, against a champion taking
    well under a millisecond for its batch, rolls back once both have 200 batches."""
    import time as clock

    class Slow(ch.Challenger):
        def predict(self, cols):  # type: ignore[no-untyped-def]
            clock.sleep(0.002)
            return super().predict(cols)

    records = records_from_frame(stream(small_raw, "slow", 3_000))
    scorer = FraudScorer(champion_bundle)
    scorer.warm()
    canary = Slow(bad_bundle, "canary", 0.9, policy(min_labels=10**9, latency_ratio=2.0), "1")
    scorer.set_challenger(canary)
    for k in range(0, len(records), 10):
        scorer.score(records[k : k + 10])
        if not canary.active:
            break
    assert canary.rolled_back is not None and "model time" in canary.rolled_back
    assert canary.arms["canary"].batches >= ch.MIN_BATCHES
