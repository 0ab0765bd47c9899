"""API keys and rate limits in process: the key file (hashes only, owner-only, revocation), the
scope check's 401/403 answers, the token buckets' 429 + Retry-After in the process and shared
through Redis, the fall-back when Redis is unreachable, and FRAUD_AUTH=off's loopback rule."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from serving import auth
from serving.auth import ApiKeyAuth, LocalBuckets, LoopbackOnly, transactions_in
from training.core import api_keys

from .conftest import free_port
from .test_http_guard import call, slow_app


def request(
    path: str = "/predict",
    key: str | None = None,
    header: bytes = b"authorization",
    client: str = "127.0.0.1",
    body: bytes = b"{}",
) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        value = f"Bearer {key}" if header == b"authorization" else key
        headers.append((header, value.encode()))
    sc = {"type": "http", "path": path, "method": "POST", "headers": headers}
    sc["client"] = (client, 40000)
    return sc, (body,)


def ask(app: Any, path: str = "/predict", key: str | None = None, **kw: Any) -> dict[str, Any]:
    sc, chunks = request(path, key, **kw)
    out = asyncio.run(call(app, sc, chunks))
    out["scope"] = sc
    return out


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "keys" / "api-keys.json"
    made = {
        name: api_keys.create(path, name, api_keys.parse_scopes(scopes), rps, tps)[0]
        for name, scopes, rps, tps in [
            ("all", "score,label,read,admin", None, None),
            ("scorer", "score", None, None),
            ("reader", "read", None, None),
            ("slow", "score", 5.0, None),
            ("small", "score", None, 100.0),
        ]
    }
    return {"path": path, **made}


def test_the_key_file_holds_hashes_only_readable_by_its_owner(keys: dict[str, Any]) -> None:
    text = keys["path"].read_text()
    assert oct(keys["path"].stat().st_mode & 0o777) == "0o600"
    for name in ("all", "scorer", "reader"):
        assert keys[name] not in text
        assert keys[name].startswith("fm_") and len(keys[name]) > 40
        stored = api_keys.load(keys["path"]).find(name)
        assert stored is not None and api_keys.matches(stored, keys[name])
        assert not api_keys.matches(stored, keys[name] + "x")


def test_names_scopes_and_revocation_are_checked(keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="an active key named 'all'"):
        api_keys.create(keys["path"], "all", ["read"])
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        api_keys.parse_scopes("score,write")
    with pytest.raises(ValueError, match="at least one scope"):
        api_keys.parse_scopes(" , ")
    revoked = api_keys.revoke(keys["path"], "reader")
    assert revoked.revoked_at is not None
    assert api_keys.load(keys["path"]).find("reader") is None
    assert any(k.name == "reader" for k in api_keys.load(keys["path"]).keys)  # kept, for record
    with pytest.raises(LookupError, match="no active key"):
        api_keys.revoke(keys["path"], "reader")
    api_keys.create(keys["path"], "reader", ["read"])  # the name is free again


def test_the_local_key_is_created_once_and_found_again(tmp_path: Path) -> None:
    path, local = tmp_path / "api-keys.json", tmp_path / "local.key"
    key, created = api_keys.ensure_local_key(path, local)
    assert created and key and local.read_text().strip() == key
    assert oct(local.stat().st_mode & 0o777) == "0o600"
    assert api_keys.load(path).find("local").scopes == list(api_keys.SCOPES)  # type: ignore[union-attr]
    assert api_keys.ensure_local_key(path, local) == (key, False)
    local.write_text("fm_00000000_not-the-key\n")  # a stale file: never printed as the key
    assert api_keys.ensure_local_key(path, local) == (None, False)


def test_without_a_valid_key_401_and_without_the_scope_403(keys: dict[str, Any]) -> None:
    app = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"])
    missing = ask(app, "/predict")
    assert missing["status"] == 401
    assert missing["headers"][b"www-authenticate"] == b"Bearer"
    assert missing["json"]["detail"][0]["loc"] == ["header", "authorization"]
    assert "missing API key" in missing["json"]["error"]
    bad = ask(app, "/predict", keys["all"][:-1] + "x")
    assert bad["status"] == 401 and "invalid or revoked" in bad["json"]["error"]
    assert ask(app, "/predict", "not-a-key-at-all")["status"] == 401
    for path, scope in [
        ("/feedback", "label"),
        ("/state/terminals/7", "read"),
        ("/test", "read"),
        ("/admin/reload", "admin"),
    ]:
        denied = ask(app, path, keys["scorer"])
        assert denied["status"] == 403, path
        assert denied["json"]["detail"][0]["scope"] == scope
        assert f"lacks scope '{scope}'" in denied["json"]["error"]
        assert ask(app, path, keys["all"])["status"] == 200
    ok = ask(app, "/predict", keys["scorer"])
    assert ok["status"] == 200 and ok["scope"]["state"]["api_key"] == "scorer"
    assert ask(app, "/predict", keys["scorer"], header=b"x-api-key")["status"] == 200
    assert ask(app, "/something-else")["status"] == 401  # unknown paths need a key too


def test_probes_docs_and_by_default_metrics_stay_open(keys: dict[str, Any]) -> None:
    app = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"])
    for path in ("/health", "/livez", "/readyz", "/docs.json", "/metrics", "/static_content/x"):
        assert ask(app, path)["status"] == 200, path
    closed = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"], metrics_need_read=True)
    assert ask(closed, "/metrics")["status"] == 401
    assert ask(closed, "/metrics", keys["scorer"])["status"] == 403
    assert ask(closed, "/metrics", keys["reader"])["status"] == 200


def test_a_revoked_key_is_refused_without_a_restart(
    keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    app = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"])
    assert ask(app, "/predict", keys["scorer"])["status"] == 200
    time.sleep(0.01)  # a new mtime
    api_keys.revoke(keys["path"], "scorer")
    assert ask(app, "/predict", keys["scorer"])["status"] == 401
    assert ask(app, "/predict", keys["all"])["status"] == 200


def test_an_unreadable_key_file_keeps_the_keys_loaded_before(
    keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    app = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"])
    time.sleep(0.01)
    keys["path"].write_text("{half a file")
    assert ask(app, "/predict", keys["scorer"])["status"] == 200


def burst(app: Any, key: str, n: int, body: bytes = b"{}") -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            sc, chunks = request("/predict", key, body=body)
            out.append(await call(app, sc, chunks))
        return out

    return asyncio.run(run())


def test_the_request_rate_limit_answers_429_with_retry_after(keys: dict[str, Any]) -> None:
    app = ApiKeyAuth(slow_app(delay=0), keys_file=keys["path"])
    answers = burst(app, keys["slow"], 8)  # 5 a second: a bucket of 5
    assert [a["status"] for a in answers] == [200] * 5 + [429] * 3
    refused = answers[-1]
    assert refused["headers"][b"retry-after"] == b"1"
    assert refused["json"]["detail"][0]["type"] == "rate_limited"
    assert "'slow'" in refused["json"]["error"] and "5 requests/s" in refused["json"]["error"]
    assert burst(app, keys["scorer"], 20)[-1]["status"] == 200  # other keys are not limited
    time.sleep(0.45)  # 0.45 s x 5/s: two tokens back
    assert [a["status"] for a in burst(app, keys["slow"], 3)] == [200, 200, 429]


def body_of(n: int) -> bytes:
    txs = [{"transaction_id": f"t{i}", "tx_amount": 1.0, "note": "{"} for i in range(n)]
    return json.dumps({"transactions": txs}).encode()


def test_the_transaction_limit_counts_what_a_body_holds(keys: dict[str, Any]) -> None:
    assert transactions_in(body_of(60).replace(b'"{"', b'""')) == 60
    assert transactions_in(b"{}") == 1
    assert transactions_in(body_of(3)) >= 3  # braces in strings count against the sender only
    app = slow_app(delay=0)
    guard = ApiKeyAuth(app, keys_file=keys["path"])
    sixty = body_of(60).replace(b'"{"', b'""')
    answers = burst(guard, keys["small"], 2, sixty)  # 100 transactions a second
    assert [a["status"] for a in answers] == [200, 429]
    assert "100 transactions/s" in answers[1]["json"]["error"]
    assert app.seen == [sixty]  # the body the app got is the one sent, read once
    big = burst(guard, keys["small"], 1, body_of(150).replace(b'"{"', b'""'))
    assert big[0]["status"] == 429  # more than a second's worth: refused, and says so


def test_local_buckets_take_all_or_nothing() -> None:
    buckets = LocalBuckets()
    take = lambda asks: asyncio.run(buckets.take(asks))  # noqa: E731
    assert take([("a:r", 10, 1), ("a:t", 100, 90)]) == 0
    wait = take([("a:r", 10, 1), ("a:t", 100, 20)])
    assert 0.05 < wait <= 0.2  # ~10 transactions short at 100/s
    assert buckets.buckets["a:r"][0] == pytest.approx(9, abs=0.1)  # nothing taken on refusal


def test_an_unreachable_redis_falls_back_to_local_buckets_fast(keys: dict[str, Any]) -> None:
    from serving import telemetry as tm

    before = tm.RATE_LIMIT_FALLBACK._value.get()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    app = ApiKeyAuth(slow_app(delay=0), keys["path"], url, "x")
    t0 = time.perf_counter()
    statuses = [a["status"] for a in burst(app, keys["slow"], 7)]
    took = time.perf_counter() - t0
    assert statuses == [200] * 5 + [429] * 2  # still limited, by this worker alone
    assert tm.RATE_LIMIT_FALLBACK._value.get() == before + 1  # one try, then a second locally
    assert took < 1.0, took


def test_auth_off_serves_loopback_clients_only() -> None:
    app = LoopbackOnly(slow_app(delay=0))
    assert ask(app, "/predict", client="127.0.0.1")["status"] == 200
    far = ask(app, "/predict", client="10.1.2.3")
    assert far["status"] == 403 and "FRAUD_AUTH=off" in far["json"]["error"]
    assert ask(app, "/admin/reload", client="10.1.2.3")["status"] == 403
    assert ask(app, "/health", client="10.1.2.3")["status"] == 200
    assert ask(app, "/metrics", client="10.1.2.3")["status"] == 200
