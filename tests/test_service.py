"""The service through `bentoml serve` in a subprocess (shared session server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from .servers import API, KEY, LIMITED_KEY, SCORE_KEY, assert_times_outside_the_clock_are_refused

pytestmark = [pytest.mark.slow, pytest.mark.server]

T0 = datetime(2018, 6, 15, 10, 0, 0)  # the day after the small dataset ends (stream clock)


def tx(i: int | str, **kw) -> dict:
    base = {
        "transaction_id": f"t-{i}",
        "tx_datetime": T0.isoformat(),
        "customer_id": 17,
        "terminal_id": "42",
        "tx_amount": 35.2,
        "tx_channel": "card_present",
        "merchant_category": "grocery",
    }
    return {**base, **kw}


def post(url: str, path: str, body) -> httpx.Response:
    return API.post(f"{url}{path}", json=body, timeout=30)


def test_predict_single(service_url: str, champion) -> None:
    r = post(service_url, "/predict", {"transactions": [tx("single")]})
    assert r.status_code == 200, r.text
    [res] = r.json()
    assert res["transaction_id"] == "t-single"
    assert 0.0 <= res["fraud_probability"] <= 1.0
    assert isinstance(res["is_fraud"], bool)
    assert res["model_version"] == champion["registration"].version


def test_predict_batch_keeps_order_and_ids(service_url: str) -> None:
    body = {"transactions": [tx(i, customer_id=i, tx_amount=10 + i) for i in range(100)]}
    r = post(service_url, "/predict", body)
    assert r.status_code == 200, r.text
    assert [x["transaction_id"] for x in r.json()] == [f"t-{i}" for i in range(100)]


def test_high_amount_card_not_present_scores_higher(service_url: str) -> None:
    normal = tx("n", customer_id="c-normal", tx_amount=20.0)
    odd = tx(
        "o",
        customer_id="c-odd",
        tx_amount=900.0,
        tx_channel="card_not_present",
        merchant_category="electronics",
    )
    r = post(service_url, "/predict", {"transactions": [normal, odd]})
    low, high = (x["fraud_probability"] for x in r.json())
    assert high > low


def test_health(service_url: str, champion) -> None:
    r = httpx.get(f"{service_url}/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"]["version"] == champion["registration"].version
    assert body["model"]["alias"] == "champion"
    assert body["model"]["compiled"] is True
    assert body["model"]["name"] == champion["settings"].registered_model
    assert body["feature_state"]["warmed_from_history"] > 1000
    assert body["feature_state"]["customers"] > 100
    assert body["uptime_seconds"] > 0


def test_test_endpoint(service_url: str) -> None:
    for method in ("GET", "POST"):
        r = API.request(method, f"{service_url}/test", timeout=30)
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["n"] == 5


def test_metrics(service_url: str) -> None:
    post(service_url, "/predict", {"transactions": [tx("m")]})
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    for name in (
        "fraud_predictions_total",
        "fraud_score_bucket",
        "fraud_model_info",
        "fraud_scoring_batch_seconds_bucket",
        "bentoml_service_request_duration_seconds",
    ):
        assert name in text, name
    assert 'decision="genuine"' in text or 'decision="fraud"' in text


def test_feedback_changes_terminal_risk(service_url: str) -> None:
    """Labels sent to /feedback feed the terminal-risk features of later transactions."""

    def batch(term: str, prefix: str) -> list[dict]:
        return [
            tx(
                f"{prefix}{i}",
                terminal_id=term,
                customer_id=f"{prefix}c{i}",
                tx_datetime=(T0 + timedelta(minutes=i)).isoformat(),
            )
            for i in range(5)
        ]

    assert post(service_url, "/predict", {"transactions": batch("T-bad", "b")}).status_code == 200
    assert post(service_url, "/predict", {"transactions": batch("T-good", "g")}).status_code == 200
    at = (T0 + timedelta(days=7, hours=12)).isoformat()
    before = API.get(f"{service_url}/state/terminals/T-bad", params={"at": at}).json()
    assert before["risk_1d"] == 0.0
    labels = [{"transaction_id": f"t-b{i}", "is_fraud": True} for i in range(5)]
    labels += [{"transaction_id": f"t-g{i}", "is_fraud": False} for i in range(5)]
    r = post(service_url, "/feedback", {"labels": labels})
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == 10 and r.json()["unknown_transaction_ids"] == []
    after = API.get(f"{service_url}/state/terminals/T-bad", params={"at": at}).json()
    assert after["risk_1d"] == 1.0 and after["risk_30d"] == 1.0
    # Two identical new customers, one at each terminal, a week later (the stream gets there
    # a day at a time: the service clock refuses a jump of more than a day).
    walk_clock(service_url, T0 + timedelta(days=7, hours=12))
    later = [
        tx("late-bad", terminal_id="T-bad", customer_id="new-1", tx_datetime=at),
        tx("late-good", terminal_id="T-good", customer_id="new-2", tx_datetime=at),
    ]
    bad, good = (
        x["fraud_probability"]
        for x in post(service_url, "/predict", {"transactions": later}).json()
    )
    assert bad > good


def walk_clock(url: str, until: datetime) -> None:
    """Advance the service's stream clock to ``until`` with a transaction every 20 hours."""
    at, i = T0, 0
    while at < until:
        at = min(at + timedelta(hours=20), until)
        i += 1
        step = tx(f"walk-{at.isoformat()}", customer_id=f"walker-{i}", terminal_id="T-walk")
        r = post(url, "/predict", {"transactions": [{**step, "tx_datetime": at.isoformat()}]})
        assert r.status_code == 200, r.text


def test_feedback_full_records_and_unknown_ids(service_url: str) -> None:
    rec = {**tx("never-seen", terminal_id="T-rec"), "is_fraud": True}
    r = post(
        service_url,
        "/feedback",
        {"transactions": [rec], "labels": [{"transaction_id": "nope", "is_fraud": True}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ingested"] == 1 and body["unknown_transaction_ids"] == ["nope"]
    at = (T0 + timedelta(days=7, hours=1)).isoformat()
    assert (
        API.get(f"{service_url}/state/terminals/T-rec", params={"at": at}).json()["risk_1d"] == 1.0
    )


BAD = [
    ({"transactions": []}, "transactions"),
    ({"transactions": [{k: v for k, v in tx(1).items() if k != "tx_amount"}]}, "tx_amount"),
    ({"transactions": [tx(1, tx_amount="abc")]}, "tx_amount"),
    ({"transactions": [tx(1, tx_amount=-5)]}, "tx_amount"),
    ({"transactions": [tx(1, tx_amount=1e12)]}, "tx_amount"),
    ({"transactions": [tx(1, tx_datetime="31/12/2018 25:00")]}, "tx_datetime"),
    ({"transactions": [tx(1, customer_id=None)]}, "customer_id"),
    ({"transactions": [tx(1, tx_channel="telepathy")]}, "tx_channel"),
    ({"transactions": [tx(1, surprise=1)]}, "surprise"),
    ({"transactions": [tx(i) for i in range(1001)]}, "transactions"),
    ({"txs": []}, "transactions"),
    ({"transactions": [tx(1), tx(2), tx(1)]}, "t-1"),  # a repeated id is named
    ({"transactions": [tx(5, transaction_id=5), tx(5, transaction_id="5")]}, "'5'"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_input_gets_4xx_naming_the_field(service_url: str, body, field: str) -> None:
    r = post(service_url, "/predict", body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_bad_feedback(service_url: str) -> None:
    r = post(service_url, "/feedback", {})
    assert r.status_code == 400 and "labels" in r.text
    r = post(service_url, "/feedback", {"labels": [{"transaction_id": "x"}]})
    assert r.status_code == 400 and "is_fraud" in r.text


def test_repeated_feedback_ids_are_named(service_url: str) -> None:
    labels = [{"transaction_id": "dup-1", "is_fraud": True}, {"transaction_id": "dup-1",
              "is_fraud": False}]  # fmt: skip
    r = post(service_url, "/feedback", {"labels": labels})
    assert r.status_code == 400 and "dup-1" in r.text and "repeated" in r.text


def largest_valid_body() -> bytes:
    """1,000 transactions with every field at its longest, pretty-printed: what the body cap
    must let through."""
    long = "x" * 64
    txs = [
        tx(i, transaction_id=f"{i:064d}", customer_id=long, terminal_id=long,
           tx_datetime="2018-06-16T10:00:00.123456+00:00", tx_amount=999_999.99,
           tx_channel="card_not_present", merchant_category=long)
        for i in range(1000)
    ]  # fmt: skip
    return json.dumps({"transactions": txs}, indent=4).encode()


def test_the_body_cap_admits_the_largest_valid_request(service_url: str) -> None:
    body = largest_valid_body()
    r = API.post(f"{service_url}/predict", content=body,
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()) == 1000
    print(f"largest valid /predict body: {len(body):,} bytes")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_gets_413_before_parsing(service_url: str, chunked: bool) -> None:
    from training.core.config import Settings

    cap = Settings().max_body_bytes
    body = b'{"transactions": [' + b" " * cap + b"]}"
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    r = API.post(f"{service_url}/predict", content=content,
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 413, r.text[:300]
    assert r.json()["detail"][0] == {"loc": ["body"], "type": "too_large", "max_bytes": cap}


def test_malformed_json(service_url: str) -> None:
    r = API.post(
        f"{service_url}/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500


def test_schemathesis_no_server_errors(service_url: str, session_dir: Path) -> None:
    """Property-based requests generated from the OpenAPI document for every operation, GET
    included, with a key that has every scope: over 1,000 cases, never a 5xx."""
    report = session_dir / "schemathesis.txt"
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{service_url}/docs.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "150",
        "--seed",
        "1",
        "--no-color",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report.write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    operations = re.search(r"Operations:\s+(\d+) selected", out.stdout)
    cases = re.search(r"Test cases:\s+(\d+) generated", out.stdout)
    assert operations and cases, out.stdout[-3000:]
    print(f"schemathesis: {operations.group(1)} operations, {cases.group(1)} cases, no 5xx")
    assert int(operations.group(1)) >= 9 and int(cases.group(1)) >= 1_000


@pytest.mark.parametrize(
    "ctype", ["multipart/form-data", "text/plain", "application/x-www-form-urlencoded"]
)
def test_non_json_body_gets_415_naming_the_header(service_url: str, ctype: str) -> None:
    r = API.post(
        f"{service_url}/predict", content=b'{"transactions": []}', headers={"content-type": ctype}
    )
    assert r.status_code == 415
    assert "content-type" in r.text.lower()


def test_client_errors_are_logged_without_tracebacks(service_url: str, session_dir: Path) -> None:
    """A 400 is a one-line warning in the server log, not an ERROR with a traceback."""
    r = post(service_url, "/predict", {"transactions": [tx("log", tx_amount=-1)]})
    assert r.status_code == 400
    log = (session_dir / "bento-serve.log").read_text()
    assert "client error ValidationError" in log
    assert "pydantic_core._pydantic_core.ValidationError" not in log


def test_keys_and_scopes_through_the_server(service_url: str) -> None:
    """401 without a key, 403 for the wrong scope (JSON naming it), open probes, X-API-Key."""
    body = {"transactions": [tx("auth-1")]}
    r = httpx.post(f"{service_url}/predict", json=body, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"][0]["loc"] == ["header", "authorization"]
    scorer = {"Authorization": f"Bearer {SCORE_KEY}"}
    assert httpx.post(f"{service_url}/predict", json=body, headers=scorer).status_code == 200
    x_api_key = {"X-API-Key": SCORE_KEY}
    assert httpx.post(f"{service_url}/predict", json=body, headers=x_api_key).status_code == 200
    for method, path, scope in [
        ("POST", "/feedback", "label"),
        ("GET", "/state/terminals/42", "read"),
        ("GET", "/test", "read"),
        ("POST", "/admin/reload", "admin"),
    ]:
        denied = httpx.request(method, f"{service_url}{path}", headers=scorer, timeout=30)
        assert denied.status_code == 403, (path, denied.text)
        assert denied.json()["detail"][0]["scope"] == scope
        assert httpx.request(method, f"{service_url}{path}").status_code == 401
    for path in ("/health", "/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{service_url}{path}", timeout=30).status_code == 200, path
    # Counted once the answer is sent: the client may ask /metrics a moment before that.
    wanted = 'fraud_errors_total{endpoint="/predict",kind="unauthenticated"}'
    deadline = time.monotonic() + 5
    while wanted not in (text := httpx.get(f"{service_url}/metrics", timeout=10).text):
        assert time.monotonic() < deadline, [x for x in text.splitlines() if "errors" in x]
        time.sleep(0.1)
    assert 'fraud_auth_failures_total{reason="scope"}' in text


def test_rate_limit_and_revocation_through_the_server(service_url: str, session_dir: Path) -> None:
    """The limited key (3 requests a second): a burst gets 429 + Retry-After; revoked in the
    key file, it is refused within ~1 s, without a restart."""
    from training.core import api_keys

    limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"transactions": [tx("rl-1")]}
    with httpx.Client(headers=limited, timeout=30) as client:
        statuses = [client.post(f"{service_url}/predict", json=body).status_code for _ in range(8)]
        assert statuses[:3] == [200] * 3 and 429 in statuses, statuses
        refused = client.post(f"{service_url}/predict", json=body)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["detail"][0]["type"] == "rate_limited"
        time.sleep(1.1)
        assert client.post(f"{service_url}/predict", json=body).status_code == 200
        keys = session_dir / "bento-serve.keys"  # written by servers.bento_server
        api_keys.revoke(keys, "limited")
        t0 = time.monotonic()
        while client.post(f"{service_url}/predict", json=body).status_code != 401:
            assert time.monotonic() - t0 < 3, "revoked key still accepted after 3 s"
            time.sleep(0.1)
        print(f"revoked key refused after {time.monotonic() - t0:.2f}s")


def test_times_outside_the_service_clock_are_refused(service_url: str) -> None:
    assert_times_outside_the_clock_are_refused(service_url, "clock-mem")


def test_a_resent_transaction_gets_the_same_answer_counted_once(service_url: str) -> None:
    first = post(service_url, "/predict", {"transactions": [tx("resend-1", customer_id="rs")]})
    assert first.status_code == 200, first.text
    later = [tx(f"resend-{i}", customer_id="rs", tx_amount=900.0 + i) for i in range(2, 8)]
    assert post(service_url, "/predict", {"transactions": later}).status_code == 200
    again = post(
        service_url, "/predict", {"transactions": [tx("resend-1", customer_id="rs", tx_amount=1.0)]}
    )
    assert again.status_code == 200 and again.json() == first.json()
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    assert "fraud_resent_transactions_total" in text
