"""/explain through `bentoml serve` (the shared session server, decision log on)."""

from __future__ import annotations

import time

import httpx
import pytest

from .servers import API, SCORE_KEY
from .test_service import tx

pytestmark = [pytest.mark.slow, pytest.mark.server]
ALL = 64  # top_k: every feature


def explain(url: str, txs: list[dict], top_k: int = ALL) -> httpx.Response:
    return API.post(f"{url}/explain", json={"transactions": txs, "top_k": top_k}, timeout=30)


def logged(url: str, tx_id: str, **params) -> httpx.Response:
    """GET /explain/{id}, waiting out the journal's delivery to the store (under a second)."""
    deadline = time.monotonic() + 10
    while True:
        r = API.get(f"{url}/explain/{tx_id}", params=params, timeout=30)
        if r.status_code != 404 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def batch(tag: str) -> list[dict]:
    """A customer's ordinary purchases and one large card-not-present one."""
    cust = f"explain-{tag}"
    return [
        tx(f"{tag}-a", customer_id=cust, tx_amount=31.0),
        tx(f"{tag}-b", customer_id=cust, tx_amount=28.5, terminal_id="77"),
        tx(
            f"{tag}-c",
            customer_id=cust,
            tx_amount=640.0,
            tx_channel="card_not_present",
            merchant_category="electronics",
        ),
    ]


def test_contributions_reproduce_the_score_and_nothing_is_recorded(
    service_url: str, champion
) -> None:
    txs = batch("exact")
    r = explain(service_url, txs)
    assert r.status_code == 200, r.text
    got = r.json()
    columns = champion["result"].feature_columns
    assert [e["transaction_id"] for e in got] == [t["transaction_id"] for t in txs]
    for e in got:
        assert e["recorded"] is False and e["degraded"] is False
        assert {c["feature"] for c in e["reasons"]} == set(columns)  # every feature, once
        total = e["base_value"] + sum(c["contribution"] for c in e["reasons"])
        assert total == pytest.approx(e["model_output"], abs=1e-6)
        # the pipeline of record's probability, and the served (compiled) one: the 1e-5 gate
        assert e["model_output"] == pytest.approx(e["fraud_probability"], abs=1e-5)
        assert e["is_fraud"] == (e["fraud_probability"] >= e["threshold"])
        sizes = [abs(c["contribution"]) for c in e["reasons"]]
        assert sizes == sorted(sizes, reverse=True)
        assert all(
            c["reason"] and c["direction"] in ("raises", "lowers", "none") for c in e["reasons"]
        )
    # the large remote purchase is explained by its amount, in words
    big = {c["feature"]: c for c in got[2]["reasons"]}
    assert big["TX_AMOUNT"]["reason"] == "amount 640.00"
    assert big["TX_CARD_NOT_PRESENT"]["reason"] == "card not present (remote payment)"
    # /explain recorded nothing: /predict now answers exactly what /explain scored (the
    # features explained are the ones the score uses), and explaining it again is a 409
    r = API.post(f"{service_url}/predict", json={"transactions": txs}, timeout=30)
    assert r.status_code == 200, r.text
    assert [p["fraud_probability"] for p in r.json()] == [e["fraud_probability"] for e in got]
    again = explain(service_url, txs[:1])
    assert again.status_code == 409, again.text
    assert "GET /explain/" in again.text and txs[0]["transaction_id"] in again.text


def test_a_logged_decision_is_explained_from_its_logged_features(service_url: str) -> None:
    txs = batch("logged")
    before = explain(service_url, txs).json()
    r = API.post(f"{service_url}/predict", json={"transactions": txs}, timeout=30)
    assert r.status_code == 200, r.text
    for e in before:
        r = logged(service_url, e["transaction_id"], top_k=ALL)
        assert r.status_code == 200, r.text
        past = r.json()
        assert past["recorded"] is True
        assert past["fraud_probability"] == e["fraud_probability"]
        assert past["model_version"] == e["model_version"]
        assert past["model_output"] == pytest.approx(e["model_output"], abs=1e-12)
        assert [(c["feature"], c["value"]) for c in past["reasons"]] == [
            (c["feature"], c["value"]) for c in e["reasons"]
        ]
    top3 = logged(service_url, txs[2]["transaction_id"], top_k=3).json()
    assert len(top3["reasons"]) == 3


def test_explain_errors_are_4xx_naming_the_problem(service_url: str) -> None:
    r = explain(service_url, [tx("k0")], top_k=0)
    assert r.status_code == 400 and "top_k" in r.text
    r = explain(service_url, [tx(f"many-{i}") for i in range(101)])
    assert r.status_code == 400 and "transactions" in r.text
    r = explain(service_url, [tx("neg", tx_amount=-1)])
    assert r.status_code == 400 and "tx_amount" in r.text
    r = API.get(f"{service_url}/explain/never-seen-anywhere", timeout=30)
    assert r.status_code == 404 and "decision log" in r.text
    r = API.get(f"{service_url}/explain/t-anything", params={"top_k": 0}, timeout=30)
    assert r.status_code == 400 and "top_k" in r.text


def test_a_labelled_record_was_never_scored(service_url: str) -> None:
    record = {**tx("fb-only", customer_id="explain-fb"), "is_fraud": True}
    r = API.post(f"{service_url}/feedback", json={"transactions": [record]}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while (r := API.get(f"{service_url}/explain/t-fb-only", timeout=30)).status_code == 404:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.status_code == 409 and "never scored" in r.text


def test_scopes_and_metrics(service_url: str) -> None:
    scorer = {"Authorization": f"Bearer {SCORE_KEY}"}
    r = httpx.post(
        f"{service_url}/explain",
        json={"transactions": [tx("scoped", customer_id="explain-scope")]},
        headers=scorer,
        timeout=30,
    )
    assert r.status_code == 200, r.text  # POST /explain: scope score, like /predict
    r = httpx.get(f"{service_url}/explain/t-scoped", headers=scorer, timeout=30)
    assert r.status_code == 403  # a logged decision's reasons: scope read
    assert httpx.post(f"{service_url}/explain", json={}, timeout=30).status_code == 401
    text = API.get(f"{service_url}/metrics", timeout=30).text
    assert 'fraud_explained_transactions_total{source="new"}' in text
    assert "fraud_explain_duration_seconds_count" in text
