"""Decision rules through the served API (the shared session server, SQLite store): actions and
rules in the answers, rule sets and lists changed without a restart, bad sets refused with their
line and field, the decision log's record, the per-rule counter, and the backtest."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from training.core import decision_store as ds

from .servers import API, SCORE_KEY, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.server]

T0 = datetime(2018, 6, 15, 9, 0, 0)  # the day after the small dataset ends (stream clock)
BIG = """\
version: test-{tag}
rules:
  - {{name: allow-customers, kind: list, entity: customer, list: allowed_customers,
      action: approve}}
  - {{name: block-terminals, kind: list, entity: terminal, list: blocked_terminals,
      action: decline}}
  - name: big-amount
    kind: compare
    field: tx_amount
    op: ">="
    value: 5000
    action: review
"""


def txs(prefix: str, n: int, **kw) -> list[dict]:
    return [
        {
            "transaction_id": f"{prefix}-{i}",
            "tx_datetime": (T0 + timedelta(seconds=i)).isoformat(),
            "customer_id": f"{prefix}-c{i}",
            "terminal_id": f"{prefix}-t{i}",
            "tx_amount": 12.5,
            "tx_channel": "card_present",
            "merchant_category": "grocery",
            **kw,
        }
        for i in range(n)
    ]


def predict(url: str, body: list[dict]) -> list[dict]:
    r = API.post(f"{url}/predict", json={"transactions": body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def tagged_set(service_url: str):
    """A rule set of this test's own version put in force; the default set again after."""
    tag = uuid4().hex[:8]
    r = API.post(f"{service_url}/admin/rules", json={"rules": BIG.format(tag=tag)})
    assert r.status_code == 200, r.text
    yield f"test-{tag}"
    from training.core import rules

    r = API.post(f"{service_url}/admin/rules", json={"rules": rules.dump(rules.default())})
    assert r.status_code == 200, r.text


def test_answers_carry_the_action_and_the_rule(service_url: str) -> None:
    """The default set: approve below the budget threshold (no rule), the model's own
    threshold to review; is_fraud stays the model's decision."""
    health = httpx.get(f"{service_url}/health").json()
    assert health["rules"]["error"] is None and health["rules"]["rules"] >= 1
    answers = predict(service_url, txs(f"a{uuid4().hex[:6]}", 30))
    for a in answers:
        assert a["action"] in ("approve", "review", "decline")
        if a["rule"] is None:
            assert a["action"] == "approve" and not a["is_fraud"]
        if a["is_fraud"]:  # at or over the threshold: the default set reviews or declines
            assert a["action"] != "approve" and a["rule"] in ("review-budget", "high-score")


def test_a_rule_set_and_the_lists_change_without_a_restart(
    service_url: str, tagged_set: str, session_dir: Path
) -> None:
    prefix = f"r{uuid4().hex[:6]}"
    assert API.get(f"{service_url}/rules").json()["version"] == tagged_set
    big = predict(service_url, txs(f"{prefix}a", 2, tx_amount=6000.0))
    assert [(a["action"], a["rule"]) for a in big] == [("review", "big-amount")] * 2

    body = txs(f"{prefix}b", 3)
    r = API.post(f"{service_url}/admin/lists/blocked_terminals",
                 json={"values": [body[1]["terminal_id"], body[2]["terminal_id"]],
                       "note": "skimmer reported"})  # fmt: skip
    assert r.status_code == 200 and r.json()["added"] == 2, r.text
    r = API.post(f"{service_url}/admin/lists/allowed_customers",
                 json={"values": [body[2]["customer_id"]]})  # fmt: skip
    assert r.status_code == 200, r.text
    answers = predict(service_url, body)
    # the allow list comes first wherever it is written: customer 2 passes terminal 2's block
    assert [(a["action"], a["rule"]) for a in answers] == [
        ("approve", None), ("decline", "block-terminals"), ("approve", "allow-customers")
    ]  # fmt: skip
    entries = API.get(f"{service_url}/admin/lists/blocked_terminals").json()["entries"]
    mine = [e for e in entries if e["value"] == body[1]["terminal_id"]]
    assert mine and mine[0]["added_by"] == "tests" and mine[0]["note"] == "skimmer reported"
    r = API.post(f"{service_url}/admin/lists/blocked_terminals/remove",
                 json={"values": [body[1]["terminal_id"]]})  # fmt: skip
    assert r.status_code == 200 and r.json()["removed"] == 1, r.text
    later = {**body[1], "transaction_id": f"{prefix}b-again"}  # the unblocked terminal
    assert predict(service_url, [later])[0]["action"] == "approve"

    # every decision logs the action, the rule and the set's version
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"

    def logged() -> dict | None:
        with ds.connect(store) as conn:
            return ds.decision(conn, f"{prefix}b-1")

    row = wait_for(logged, 60, "the decision in the store", step=0.5)
    assert (row["action"], row["rule"], row["rule_set_version"]) == (
        "decline", "block-terminals", tagged_set
    )  # fmt: skip

    metrics = httpx.get(f"{service_url}/metrics", headers=API.headers).text
    line = 'fraud_rule_decisions_total{action="decline",rule="block-terminals"}'
    assert any(m.startswith(line) and float(m.split()[-1]) >= 1 for m in metrics.splitlines())


def test_a_bad_rule_set_is_refused_with_its_line_and_field(
    service_url: str, tagged_set: str
) -> None:
    bad = BIG.format(tag="x").replace('op: ">="', 'op: "=>"')
    r = API.post(f"{service_url}/admin/rules", json={"rules": bad})
    assert r.status_code == 400, r.text
    assert "line 10" in r.text and "rules.2.op" in r.text, r.text
    as_object = {"version": "obj", "rules": [{"name": "big", "kind": "compare", "field":
                 "tx_amount", "op": "=>", "value": 500, "action": "review"}]}  # fmt: skip
    r = API.post(f"{service_url}/admin/rules", json={"rules": as_object})
    assert r.status_code == 400 and "rules.0.op" in r.text and "JSON" in r.text, r.text
    unknown = BIG.format(tag="y").replace("field: tx_amount", "field: NOT_A_FEATURE")
    r = API.post(f"{service_url}/admin/rules", json={"rules": unknown})
    assert r.status_code == 400 and "NOT_A_FEATURE" in r.text, r.text
    reused = BIG.format(tag=tagged_set.removeprefix("test-")).replace("5000", "4000")
    r = API.post(f"{service_url}/admin/rules", json={"rules": reused})
    assert r.status_code == 400 and "new version" in r.text, r.text
    assert API.get(f"{service_url}/rules").json()["version"] == tagged_set  # the old one stays
    scorer = httpx.post(f"{service_url}/admin/rules", json={"rules": BIG.format(tag="z")},
                        headers={"Authorization": f"Bearer {SCORE_KEY}"})  # fmt: skip
    assert scorer.status_code == 403


def test_a_backtest_through_the_api_matches_the_library(
    service_url: str, session_dir: Path
) -> None:
    """Labelled decisions a week old, then the candidate's report through /rules/backtest equals
    training.core.backtest's on the same store."""
    from training.core import backtest, rules

    prefix = f"k{uuid4().hex[:6]}"
    start = T0 + timedelta(hours=1)
    body = [
        {**t, "tx_datetime": (start + timedelta(minutes=i)).isoformat()}
        for i, t in enumerate(txs(prefix, 40, tx_amount=20.0))
    ]
    for t in body[::4]:
        t["tx_amount"] = 7000.0
    predict(service_url, body)
    labels = [{"transaction_id": t["transaction_id"], "is_fraud": t["tx_amount"] > 5000}
              for t in body]  # fmt: skip
    r = API.post(f"{service_url}/feedback", json={"labels": labels})
    assert r.status_code == 200, r.text
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"

    def shipped() -> bool:
        with ds.connect(store) as conn:
            return ds.count(conn, ds.label_events, [t["transaction_id"] for t in body]) == 40

    wait_for(shipped, 60, "the labels in the store", step=0.5)
    candidate = BIG.format(tag="candidate")
    until = start + timedelta(hours=1)
    window = {"since": f"{start.isoformat()}Z", "until": f"{until.isoformat()}Z"}
    r = API.post(f"{service_url}/rules/backtest", json={"rules": candidate, **window})
    assert r.status_code == 200, r.text
    got = r.json()
    live = API.get(f"{service_url}/rules").json()
    want = backtest.backtest(
        store, rules.parse(candidate), rules.parse(live["yaml"]),
        datetime.fromisoformat(window["since"]), datetime.fromisoformat(window["until"]),
        {}, 7, 100,
    ).to_dict()  # fmt: skip
    assert got == want
    hits = {h["name"]: h for h in got["candidate"]["rules"]}
    assert hits["big-amount"]["hits"] == 10 and hits["big-amount"]["precision"] == 1.0
    assert got["transactions"] == 40 and got["frauds"] == 10
    empty = API.post(f"{service_url}/rules/backtest",
                     json={"since": "2030-01-01T00:00:00Z"})  # fmt: skip
    assert empty.status_code == 404 and "no decisions" in empty.text
    mixed = {"since": start.isoformat(), "until": f"{until.isoformat()}+00:00"}  # naive: UTC
    r = API.post(f"{service_url}/rules/backtest", json={"rules": candidate, **mixed})
    assert r.status_code == 200 and r.json() == got, r.text
    backwards = {"since": f"{until.isoformat()}Z", "until": f"{start.isoformat()}Z"}
    r = API.post(f"{service_url}/rules/backtest", json=backwards)
    assert r.status_code == 400 and "until" in r.text
    long = {
        "since": f"{start.isoformat()}Z",
        "until": f"{(start + timedelta(days=40)).isoformat()}Z",
    }
    r = API.post(f"{service_url}/rules/backtest", json=long)
    assert r.status_code == 400 and "31 days" in r.text


def test_replay_works_the_review_queue_the_same_day(
    service_url: str, tagged_set: str, session_dir: Path
) -> None:
    """`fraudops replay --queue-same-day`: the day's review answers with the highest scores, up
    to the budget, get their true label (fraud or genuine) at the day's end."""
    import pandas as pd

    from training.core import schema
    from training.demo import replay

    from .servers import KEY

    prefix = f"v{uuid4().hex[:6]}"
    frame = pd.DataFrame(
        {
            schema.TRANSACTION_ID: [f"{prefix}-{i}" for i in range(30)],
            schema.TX_DATETIME: [pd.Timestamp(T0) + pd.Timedelta(minutes=i) for i in range(30)],
            schema.CUSTOMER_ID: [f"{prefix}-c{i}" for i in range(30)],
            schema.TERMINAL_ID: [f"{prefix}-t{i}" for i in range(30)],
            schema.TX_AMOUNT: [6000.0 + i if i % 3 == 0 else 20.0 for i in range(30)],
            schema.TX_FRAUD: [int(i % 6 == 0) for i in range(30)],
        }
    )
    report = replay.replay(service_url, schema.normalize(frame), KEY, 7, True, 7, queue_budget=6)
    assert report.answered == 30 and report.labels_sent == 0  # no chargeback within the delay
    queued = sorted(((p, tx) for tx, p, a in report.answers if a == "review"), reverse=True)
    assert len(queued) == 10 and report.verdicts_sent == 6
    worked = {tx for _, tx in queued[:6]}
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"

    def labels() -> dict[str, list[bool]] | None:
        with ds.connect(store) as conn:
            found = {tx: [e["is_fraud"] for e in ds.label_history(conn, tx)] for tx in worked}
        return found if all(found.values()) else None

    found = wait_for(labels, 60, "the queue's verdicts in the store", step=0.5)
    truth = dict(zip(frame[schema.TRANSACTION_ID], frame[schema.TX_FRAUD], strict=True))
    assert found == {tx: [bool(truth[tx])] for tx in worked}
    with ds.connect(store) as conn:  # the rest of the queue, over the budget: no verdict
        assert all(not ds.label_history(conn, tx) for _, tx in queued[6:])
