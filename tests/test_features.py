"""Feature definitions: point-in-time correctness, the label delay, and online/offline parity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from serving.online_features import OnlineFeatures, records_from_frame, replay
from serving.state import UNKNOWN_LABEL, FeatureState, InMemoryFeatureState
from training.core import features, schema
from training.core.features import FeatureConfig
from training.demo.simulate import SimulationConfig, simulate

CFG = FeatureConfig()
StateFactory = Callable[[int, int], FeatureState]  # the make_state fixture (conftest)


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    return schema.normalize(
        simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=50, seed=5))
    )


def test_feature_names_with_and_without_categoricals(stream: pd.DataFrame) -> None:
    with_cats = features.offline_features(stream, CFG)
    assert list(with_cats.columns) == features.feature_names(CFG, categorical=True)
    plain = stream.drop(columns=[schema.TX_CHANNEL, schema.MERCHANT_CATEGORY])
    without = features.offline_features(plain, CFG)
    assert list(without.columns) == features.feature_names(CFG, categorical=False)
    assert len(features.feature_names(CFG, categorical=False)) == 15 + 3


def test_baseline_definitions_by_hand(stream: pd.DataFrame) -> None:
    feats = features.offline_features(stream, CFG)
    i = len(stream) - 1
    row, t = stream.iloc[i], stream[schema.TX_DATETIME].iloc[i]
    cust = stream[(stream[schema.CUSTOMER_ID] == row[schema.CUSTOMER_ID]) & (stream.index <= i)]
    last7 = cust[cust[schema.TX_DATETIME] > t - pd.Timedelta(days=7)]
    assert feats.loc[i, "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == len(last7)
    assert feats.loc[i, "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx(
        last7[schema.TX_AMOUNT].mean()
    )
    term = stream[stream[schema.TERMINAL_ID] == row[schema.TERMINAL_ID]]
    lo, hi = t - pd.Timedelta(days=37), t - pd.Timedelta(days=7)
    win = term[(term[schema.TX_DATETIME] > lo) & (term[schema.TX_DATETIME] <= hi)]
    assert feats.loc[i, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] == len(win)
    expected_risk = win[schema.TX_FRAUD].mean() if len(win) else 0.0
    assert feats.loc[i, "TERMINAL_ID_RISK_30DAY_WINDOW"] == pytest.approx(expected_risk)
    assert feats.loc[i, "TX_DURING_NIGHT"] == int(t.hour <= 6)
    assert feats.loc[i, "TX_DURING_WEEKEND"] == int(t.weekday() >= 5)


def test_large_transactions_by_hand(stream: pd.DataFrame) -> None:
    """The customer's earlier transactions in the past 14 days over 3x its 30-day average
    (current transaction included in the average), for every transaction of one customer."""
    feats = features.offline_features(stream, CFG)
    # the customer of the highest count (every one of its transactions checked by hand) and
    # the busiest customer
    top = stream.loc[feats["CUSTOMER_NB_LARGE_TX_14DAY"].idxmax(), schema.CUSTOMER_ID]
    busiest = stream[schema.CUSTOMER_ID].value_counts().index[0]
    mine = stream[stream[schema.CUSTOMER_ID].isin([top, busiest])]
    mine = mine.sort_values([schema.CUSTOMER_ID, schema.TX_DATETIME], kind="stable")
    checked = 0
    for i, row in mine.iterrows():
        t = row[schema.TX_DATETIME]
        same = mine[mine[schema.CUSTOMER_ID] == row[schema.CUSTOMER_ID]]
        pos = same.index.get_loc(i)
        before = same.iloc[:pos]
        last30 = same.iloc[: pos + 1]
        last30 = last30[last30[schema.TX_DATETIME] > t - pd.Timedelta(days=30)]
        avg = last30[schema.TX_AMOUNT].mean()
        last14 = before[before[schema.TX_DATETIME] > t - pd.Timedelta(days=14)]
        expected = int((last14[schema.TX_AMOUNT] > 3 * avg).sum())
        assert feats.loc[i, "CUSTOMER_NB_LARGE_TX_14DAY"] == expected, (i, expected)
        checked += expected
    assert checked > 0  # the customer has some: the comparison was exercised


def test_no_future_data(stream: pd.DataFrame) -> None:
    """Changing or dropping everything after a cut-off leaves earlier features unchanged."""
    cut = stream[schema.TX_DATETIME].iloc[len(stream) // 2]
    full = features.offline_features(stream, CFG)
    past = stream[stream[schema.TX_DATETIME] <= cut]
    tampered = stream.copy()
    future = tampered[schema.TX_DATETIME] > cut
    tampered.loc[future, schema.TX_AMOUNT] *= 7
    tampered.loc[future, schema.TX_FRAUD] = 1
    a = features.offline_features(past, CFG)
    b = features.offline_features(tampered, CFG).iloc[: len(past)]
    pd.testing.assert_frame_equal(a, full.iloc[: len(past)])
    pd.testing.assert_frame_equal(b, full.iloc[: len(past)])


def test_label_delay_respected(stream: pd.DataFrame) -> None:
    """Labels of the last 7 days before a transaction do not influence its features."""
    t_last = stream[schema.TX_DATETIME].iloc[-1]
    recent = stream[schema.TX_DATETIME] > t_last - pd.Timedelta(days=7)
    flipped = stream.copy()
    flipped.loc[recent, schema.TX_FRAUD] = 1 - flipped.loc[recent, schema.TX_FRAUD]
    a = features.offline_features(stream, CFG).iloc[-1]
    b = features.offline_features(flipped, CFG).iloc[-1]
    pd.testing.assert_series_equal(a, b)
    # ... while older labels do.
    old = (stream[schema.TX_DATETIME] <= t_last - pd.Timedelta(days=7)) & (
        stream[schema.TERMINAL_ID] == stream[schema.TERMINAL_ID].iloc[-1]
    )
    if old.any():
        flipped2 = stream.copy()
        flipped2.loc[old, schema.TX_FRAUD] = 1 - flipped2.loc[old, schema.TX_FRAUD]
        c = features.offline_features(flipped2, CFG).iloc[-1]
        assert c["TERMINAL_ID_RISK_30DAY_WINDOW"] != a["TERMINAL_ID_RISK_30DAY_WINDOW"]


def state(make_state: StateFactory) -> FeatureState:
    return make_state(CFG.customer_retention_ms, CFG.terminal_retention_ms)


def test_online_offline_parity(stream: pd.DataFrame, make_state: StateFactory) -> None:
    """Replay the stream online, each label arriving 7 days after its transaction: every online
    feature equals the offline one, with the state in memory and in Redis."""
    offline = features.offline_features(stream, CFG)
    online = OnlineFeatures(state(make_state), CFG, categorical=True)
    got = replay(records_from_frame(stream), stream[schema.TX_FRAUD].tolist(), online, CFG.delay_ms)
    assert list(got.columns) == list(offline.columns)
    num = [c for c in offline.columns if c != schema.MERCHANT_CATEGORY]
    diff = np.abs(got[num].to_numpy(float) - offline[num].to_numpy(float))
    assert diff.max() <= 1e-9, dict(zip(num, diff.max(axis=0), strict=True))
    assert (
        got[schema.MERCHANT_CATEGORY].to_numpy() == offline[schema.MERCHANT_CATEGORY].to_numpy()
    ).all()
    # The state stays bounded (the 50-day stream is longer than the retention).
    times = features.to_ms(stream[schema.TX_DATETIME])
    young = int((times > times.max() - CFG.terminal_retention_ms).sum())
    assert young < len(stream)
    st = online.state
    if isinstance(st, InMemoryFeatureState):  # after a sweep: exactly the young transactions
        st.expire()
        assert st.stats()["transactions"] == young
    else:  # Redis trims a history when a batch touches it: nothing a window cannot reach
        last = stream.groupby(schema.CUSTOMER_ID)[schema.TX_DATETIME].max()
        hist = st.customer_histories(last.index.tolist())
        slack = CFG.customer_retention_ms + features.MS_PER_DAY
        last_ms = features.to_ms(last)
        assert all(
            not h[0] or h[0][0] > t - slack for h, t in zip(hist.values(), last_ms, strict=True)
        )
        assert sum(len(h[0]) for h in hist.values()) < len(stream)


def test_warm_start_matches_offline(stream: pd.DataFrame, make_state: StateFactory) -> None:
    """A state materialised from the last 37 days gives the next transaction its real history."""
    cut = len(stream) - 200
    history, live = stream.iloc[:cut], stream.iloc[cut:]
    recent = history[
        history[schema.TX_DATETIME] > history[schema.TX_DATETIME].max() - pd.Timedelta(days=37)
    ]
    online = OnlineFeatures(state(make_state), CFG, categorical=True)
    online.warm(recent)
    got = online.compute(records_from_frame(live.iloc[:1]))
    expected = features.offline_features(stream, CFG).iloc[cut : cut + 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)


def test_feedback_of_unseen_transactions(stream: pd.DataFrame, make_state: StateFactory) -> None:
    online = OnlineFeatures(state(make_state), CFG, categorical=True)
    recs = records_from_frame(stream.iloc[:10])
    assert online.feedback({"nope": 1}).unknown == ["nope"]
    online.ingest(recs, [1] * len(recs))
    assert online.feedback({recs[0].transaction_id: 0}).unknown == []
    assert online.feedback({recs[9].transaction_id: 1, "nope": 0}).unknown == ["nope"]


def test_labels_count_decisions_once(stream: pd.DataFrame, make_state: StateFactory) -> None:
    """Live precision/recall: a label for a scored transaction lands in one confusion cell,
    once; labels for warm-up or ingested transactions (not scored here) count nowhere."""
    online = OnlineFeatures(state(make_state), CFG, categorical=True)
    recs = records_from_frame(stream.iloc[:6])
    online.ingest(recs[:2], [0, 1])
    online.compute_columns(recs[2:], decided_later=True)
    online.record(recs[2:], [1, 1, 0, 0])
    ids = [r.transaction_id for r in recs]
    update = online.feedback({ids[0]: 1, ids[2]: 1, ids[3]: 0, ids[4]: 1, ids[5]: 0})
    assert update.unknown == []
    assert update.confusion == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    again = online.feedback({ids[2]: 1, ids[3]: 0})
    assert again.confusion == {"tp": 0, "fp": 0, "fn": 0, "tn": 0}


def test_running_totals_survive_late_events_label_changes_and_expiry(
    make_state: StateFactory,
) -> None:
    """The state's running totals (window sums as differences) equal sums recomputed from the
    raw events after out-of-order arrivals, fraud labels set and withdrawn, and expiry."""
    from bisect import bisect_right

    from serving.state import Event

    rng = np.random.default_rng(11)
    day = features.MS_PER_DAY
    state = make_state(3 * day, 5 * day)
    in_memory = isinstance(state, InMemoryFeatureState)
    if in_memory:
        state.sweep_every = 10**9
    events: dict[str, list] = {}  # id -> [customer, terminal, time, cents, label]
    clock = 0
    for i in range(3_000):
        clock += int(rng.integers(0, 600_000))
        late = rng.random() < 0.1  # one in ten arrives up to a day late
        t = clock - int(rng.integers(0, day)) if late else clock
        tx = f"t{i}"
        ev = [f"c{rng.integers(20)}", f"m{rng.integers(15)}", t, int(rng.integers(1, 10**5)), -1]
        ev[4] = int(rng.choice([-1, 0, 1], p=[0.6, 0.3, 0.1]))
        events[tx] = ev
        state.append([Event(tx, ev[0], ev[1], t, ev[3], ev[4])])
        if i % 50 == 49:  # labels: new ones, and some frauds withdrawn (chargeback reversed)
            ids = rng.choice(list(events), size=10, replace=False).tolist()
            labels = {tx_id: int(rng.integers(0, 2)) for tx_id in ids}
            state.set_labels(labels)
            for tx_id, lab in labels.items():
                events[tx_id][4] = lab
        if i % 1_000 == 999 and in_memory:
            state.expire()
    newest = max(e[2] for e in events.values())
    cut_c, cut_t = newest - 3 * day, newest - 5 * day
    if in_memory:
        state.expire()
    # Redis trims a history when a batch touches it: older events may remain until then, and
    # are outside every window; the in-memory state has swept them all.
    for cid, (times, cum) in state.customer_histories([f"c{k}" for k in range(20)]).items():
        raw = sorted((e[2], e[3]) for e in events.values() if e[0] == cid and e[2] > cut_c)
        k = bisect_right(times, cut_c)
        assert k == 0 or not in_memory
        assert times[k:] == [t for t, _ in raw]
        assert len(cum) == len(times) + 1
        for lo in range(k, len(times)):  # every window sum, from its left edge to the newest
            assert cum[-1] - cum[lo] == sum(c for _, c in raw[lo - k :])
    for term, (times, frauds) in state.terminal_histories([f"m{k}" for k in range(15)]).items():
        raw = sorted((e[2], e[4]) for e in events.values() if e[1] == term and e[2] > cut_t)
        k = bisect_right(times, cut_t)
        assert k == 0 or not in_memory
        assert times[k:] == [t for t, _ in raw]
        assert len(frauds) == len(times) + 1
        for lo in range(k, len(times)):
            assert frauds[-1] - frauds[lo] == sum(1 for _, lab in raw[lo - k :] if lab == 1)


def test_batch_sees_its_own_earlier_transactions_in_any_time_order(
    make_state: StateFactory,
) -> None:
    """Within one batch, a customer's later rows see its earlier rows (by batch position) whose
    time falls in the window, also when the batch is not in time order."""
    from serving.online_features import TxRecord

    rng = np.random.default_rng(5)
    day = features.MS_PER_DAY
    online = OnlineFeatures(state(make_state), CFG, categorical=False)
    base = 100 * day
    seen: list[TxRecord] = []
    for i in range(400):
        t = base - int(rng.integers(0, 40 * day))
        seen.append(TxRecord(f"h{i}", f"c{i % 7}", f"m{i % 5}", t, int(rng.integers(1, 9_999))))
    online.ingest(seen, [UNKNOWN_LABEL] * len(seen))
    batch = [
        TxRecord(f"b{i}", f"c{rng.integers(3)}", "m0", base + int(rng.integers(-day, day)), 100 + i)
        for i in range(30)
    ]
    cols = online.compute_columns(batch, record=False)
    for k, r in enumerate(batch):
        prior = [e for e in [*seen, *batch[:k]] if e.customer_id == r.customer_id]
        for w in CFG.windows:
            win = [e for e in prior if r.time_ms - w * day < e.time_ms <= r.time_ms]
            count = len(win) + 1
            avg = (sum(e.amount_cents for e in win) + r.amount_cents) / count / 100
            assert cols[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"][k] == count
            assert cols[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"][k] == pytest.approx(avg)
