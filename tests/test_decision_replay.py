"""The online state rebuilt from the decision log: a scorer that restarts (warm-up from the
model's history, then the log replayed) scores exactly as a twin that never stopped."""

from __future__ import annotations

from pathlib import Path

import bentoml
import pandas as pd
import pytest

from serving.decision_log import DecisionLog
from serving.model_bundle import ModelBundle
from serving.online_features import records_from_frame
from serving.scorer import FraudScorer
from training.core import decision_store as ds


@pytest.fixture
def bundle(champion) -> ModelBundle:
    model = bentoml.models.get(champion["imported"].tag)
    return ModelBundle.load(Path(model.path), model.info.metadata)


def stream(small_raw: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` transactions after the model's history: the last ones of the small set moved a
    day on, on the customers and terminals the history knows."""
    tail = small_raw.tail(n).copy()
    tail["TRANSACTION_ID"] = "live-" + tail["TRANSACTION_ID"].astype(str)
    tail["TX_DATETIME"] = tail["TX_DATETIME"] + pd.Timedelta(days=1)
    return tail


def serve(scorer: FraudScorer, log: DecisionLog, frame: pd.DataFrame) -> None:
    """Score in batches of 25 and journal each batch, as the service does."""
    records = records_from_frame(frame)
    for start in range(0, len(records), 25):
        batch = records[start : start + 25]
        scored = scorer.score(batch)
        lines = log.decision_lines(
            batch, ["tests"] * len(batch), scored.proba.tolist(), scored.flagged.tolist(),
            [scored.version] * len(batch), scored.columns, "fraud_detector", scorer.threshold,
            False,
        )  # fmt: skip
        log.record_sync(lines)


def test_a_restarted_scorer_scores_as_its_twin_that_never_stopped(
    bundle: ModelBundle,
    small_raw: pd.DataFrame,
    tmp_path: Path,
    store_url: str,
) -> None:
    live = stream(small_raw, 300)
    labels = {
        tx: int(f)
        for tx, f in zip(live["TRANSACTION_ID"][:120], live["TX_FRAUD"][:120], strict=True)
    }
    labels[live["TRANSACTION_ID"].iloc[0]] = 1 - labels[live["TRANSACTION_ID"].iloc[0]]  # fixed
    corrected = {live["TRANSACTION_ID"].iloc[0]: 1 - labels[live["TRANSACTION_ID"].iloc[0]]}

    twin = FraudScorer(bundle)
    twin.warm()
    first = FraudScorer(bundle)
    log = DecisionLog(tmp_path / "journal", store_url, first.columns)
    first.warmup.replay_source = log.logged_since
    first.warm()
    assert first.warmup.replayed == 0  # nothing logged yet
    records = records_from_frame(live)
    for start in range(0, len(records), 25):  # the twin: the same batches, never stopped
        twin.score(records[start : start + 25])
    serve(first, log, live)
    for scorer in (twin, first):
        scorer.feedback(labels)
        scorer.feedback(corrected)
    log.record_sync(log.label_lines(labels, "analyst"))
    log.record_sync(log.label_lines(corrected, "analyst"))
    # labelled transactions from another channel, sent as full records (never scored here)
    other = stream(small_raw, 340).head(40)
    other["TRANSACTION_ID"] = "sent-" + other["TRANSACTION_ID"]
    sent, sent_labels = records_from_frame(other), [1] * 10 + [0] * 30
    for scorer in (twin, first):
        scorer.feedback({}, sent, sent_labels)
    log.record_sync(
        log.feedback_record_lines(sent, "analyst", "fraud_detector", first.model_version)
        + log.label_lines(
            {r.transaction_id: lab for r, lab in zip(sent, sent_labels, strict=True)}, "analyst"
        )
    )
    log.close()  # a clean stop delivers the journal

    restarted = FraudScorer(bundle)
    again = DecisionLog(tmp_path / "journal", store_url, restarted.columns)
    restarted.warmup.replay_source = again.logged_since
    restarted.warm()
    assert restarted.warmup.replayed == 340 and restarted.warmup.replay_error is None
    probe = stream(small_raw, 400).head(60)  # the same customers and terminals, later
    probe["TX_DATETIME"] = probe["TX_DATETIME"] + pd.Timedelta(hours=20)
    probe["TRANSACTION_ID"] = "probe-" + probe["TRANSACTION_ID"]
    expected = twin.score(records_from_frame(probe), record=False).proba
    got = restarted.score(records_from_frame(probe), record=False).proba
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert restarted.features.state.stats() == twin.features.state.stats()
    # without the log the state lacks the stream: the probe scores differently
    cold = FraudScorer(bundle)
    cold.warm()
    assert cold.score(records_from_frame(probe), record=False).proba.tolist() != got.tolist()
    # a re-sent transaction keeps its first answer across the restart
    sent = records_from_frame(live.head(3))
    assert restarted.score(sent).proba.tolist() == pytest.approx(
        twin.score(sent).proba.tolist(), abs=1e-12
    )
    again.close()
    engine = ds.engine_for(store_url)
    with engine.connect() as conn:
        assert ds.count(conn, ds.decisions) == 340
    engine.dispose()


def test_the_store_down_at_start_serves_on_and_says_so(bundle: ModelBundle, tmp_path: Path) -> None:
    scorer = FraudScorer(bundle)
    log = DecisionLog(tmp_path / "journal", f"sqlite:///{tmp_path / 'gone' / 'x.db'}", [])
    (tmp_path / "gone").rmdir()  # the store's folder vanished: every connection fails
    (tmp_path / "gone").write_text("not a folder")
    scorer.warmup.replay_source = log.logged_since
    assert scorer.warm() > 0  # the history is there
    assert scorer.warmup.replayed is None and scorer.warmup.replay_error
    log.close()


def test_training_data_from_the_log_follows_the_label_policy_and_the_feature_definitions(
    bundle: ModelBundle,
    small_raw: pd.DataFrame,
    tmp_path: Path,
    store_url: str,
) -> None:
    from training.core import decision_source, schema

    scorer = FraudScorer(bundle)
    log = DecisionLog(tmp_path / "journal", store_url, scorer.columns)
    scorer.warm()
    live = stream(small_raw, 200)
    later = live.index[100:]  # the second half a day later: young at the policy's clock
    live.loc[later, "TX_DATETIME"] = live.loc[later, "TX_DATETIME"] + pd.Timedelta(days=1)
    serve(scorer, log, live)
    ids = live["TRANSACTION_ID"].tolist()
    frauds = {tx: 1 for tx in ids[:5]}  # reported frauds, one corrected back to genuine
    frauds[ids[150]] = 1  # and one young fraud: labelled, so in
    log.record_sync(log.label_lines({**frauds, ids[5]: 0}, "analyst"))
    log.record_sync(log.label_lines({ids[4]: 0}, "analyst"))
    log.close()

    now = live["TX_DATETIME"].iloc[99].to_pydatetime()  # the policy's clock: the first day
    window = decision_source.load_window(
        store_url, since=live["TX_DATETIME"].min().to_pydatetime(), label_delay_days=0, now=now
    )
    # labelled: 7; unlabelled on the clock's day or before: genuine; on the next day: left out
    young = 100 - 1
    assert window.labelled == 7 and window.left_out == young
    assert len(window.raw) == 200 - young
    fraud = dict(zip(window.raw["TRANSACTION_ID"], window.raw["TX_FRAUD"], strict=True))
    assert [fraud[tx] for tx in ids[:6]] == [1, 1, 1, 1, 0, 0]  # the latest label wins
    assert window.raw["TX_AMOUNT"].tolist() == pytest.approx(
        live.set_index("TRANSACTION_ID").loc[window.raw["TRANSACTION_ID"], "TX_AMOUNT"].tolist()
    )

    # the features the service logged are those the one definition computes offline
    history = schema.normalize(pd.concat([small_raw, live], ignore_index=True))
    gaps = decision_source.feature_parity(window, history)
    print("largest |logged - offline| per feature:", gaps)
    customer = {k: v for k, v in gaps.items() if not k.startswith("TERMINAL_ID_")}
    assert customer and max(customer.values()) < 1e-9, customer
