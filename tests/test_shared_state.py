"""Several serving workers on one Redis feature state: `bentoml serve` with FRAUD_WORKERS=2."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import bentoml
import httpx
import pandas as pd
import pytest

from serving.api_models import epoch_ms
from serving.auth import ApiKeyAuth
from serving.challenger import RollbackPolicy
from serving.clock import ServiceClock
from serving.hot_swap import HotSwap
from serving.model_bundle import ModelBundle
from serving.online_features import records_from_frame
from serving.redis_state import RedisFeatureState
from serving.scorer import FraudScorer
from training.core.features import MS_PER_DAY, FeatureConfig
from training.core.schema import request_bodies

from .conftest import REDIS_URL, free_port
from .servers import API, AUTH, assert_times_outside_the_clock_are_refused, wait_for
from .test_auth import call, request, slow_app
from .test_auth import keys as keys
from .test_clock import DAY, START

pytestmark = pytest.mark.redis  # every test here needs the session's Redis


def _state(prefix: str) -> RedisFeatureState:
    cfg = FeatureConfig()
    return RedisFeatureState.from_url(
        REDIS_URL, cfg.customer_retention_ms, cfg.terminal_retention_ms, prefix
    )


def _stream(small_raw: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` new transactions of three known customers, minutes apart after the history ends."""
    tail = small_raw.tail(200)
    customers = tail["CUSTOMER_ID"].drop_duplicates().head(3).tolist()
    rows = tail[tail["CUSTOMER_ID"].isin(customers)].head(1)
    start = small_raw["TX_DATETIME"].max()
    out = pd.concat([rows] * n, ignore_index=True)
    out["CUSTOMER_ID"] = [customers[i % 3] for i in range(n)]
    out["TX_DATETIME"] = [start + pd.Timedelta(minutes=3 * (i + 1)) for i in range(n)]
    out["TX_AMOUNT"] = [12.5 + 7 * i for i in range(n)]
    out["TRANSACTION_ID"] = [f"shared-{uuid4().hex[:8]}-{i}" for i in range(n)]
    return out


@pytest.fixture(scope="module")
def two_workers(champion, session_dir: Path):
    from .servers import bento_server

    prefix = f"test-{uuid4().hex[:12]}"
    port = free_port()
    env = {
        "FRAUD_PORT": str(port),
        "FRAUD_STATE_BACKEND": "redis",
        "FRAUD_REDIS_URL": REDIS_URL,
        "FRAUD_STATE_PREFIX": prefix,
        "FRAUD_WORKERS": "2",
        "FRAUD_RULES_REFRESH_S": "600",  # rule changes reach the other worker by announcement
        "BENTOML_DO_NOT_TRACK": "True",
    }
    try:
        with bento_server(port, env, session_dir / "bento-serve-2workers.log") as url:
            yield url, prefix
    finally:
        _state(prefix).clear()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_two_workers_share_one_warmed_state(two_workers) -> None:
    url, _ = two_workers
    seen: dict[int, dict] = {}
    for _ in range(60):  # a new connection each time: the kernel spreads them over the workers
        health = httpx.get(f"{url}/health", timeout=10).json()
        seen[health["process"]] = health["feature_state"]
        if len(seen) == 2:
            break
    assert len(seen) == 2, "only one worker answered"
    warmed = {s["warmed_from_history"] for s in seen.values()}
    assert len(warmed) == 1 and warmed.pop() > 0  # warmed once, by one worker, for both


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_workers_see_each_others_transactions(two_workers, champion, small_raw) -> None:
    """One transaction per request over new connections (either worker may answer): the served
    probabilities equal an in-process scorer's that saw the same sequence in one process."""
    url, prefix = two_workers
    stream = _stream(small_raw, 24)
    served = []
    for body in request_bodies(stream):
        reply = API.post(f"{url}/predict", json={"transactions": [body]}, timeout=10)
        assert reply.status_code == 200, reply.text
        served.append(reply.json()[0]["fraud_probability"])
    model = bentoml.models.get(champion["imported"].tag)
    scorer = FraudScorer(ModelBundle.load(Path(model.path), model.info.metadata))
    scorer.warm()
    expected = [float(scorer.score([r]).proba[0]) for r in records_from_frame(stream)]
    assert served == pytest.approx(expected, abs=1e-7)
    # and the shared state holds every one of them, whichever worker scored it
    hist = _state(prefix).customer_histories(stream["CUSTOMER_ID"].unique().tolist())
    times = {t for h in hist.values() for t in h[0]}
    assert all(int(t.value // 1_000_000) in times for t in stream["TX_DATETIME"])


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_times_outside_the_clock_are_refused_by_both_workers(two_workers) -> None:
    url, _ = two_workers
    for i in range(4):  # new connections: both workers, one shared clock
        assert_times_outside_the_clock_are_refused(url, f"clock-redis-{i}")


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_a_worker_without_traffic_takes_the_stream_on_where_the_other_left_it(
    two_workers,
) -> None:
    """Three days of stream over one keep-alive connection (one worker), then the next
    transaction over new connections (both workers): every one is answered 200, none refused
    by a worker whose clock stayed days behind (the soak's 400s)."""
    from datetime import datetime, timedelta

    url, _ = two_workers

    def body(tx_id: str, when: datetime) -> dict:
        return {"transactions": [{"transaction_id": tx_id, "tx_datetime": when.isoformat(),
                "customer_id": "lag-C", "terminal_id": "lag-T", "tx_amount": 9.5}]}  # fmt: skip

    with httpx.Client(headers=AUTH, timeout=30) as busy:
        at = datetime.fromisoformat(busy.get(f"{url}/health").json()["clock"]["now"])
        for _ in range(12):  # 6-hour steps, each inside the busy worker's window
            at += timedelta(hours=6)
            r = busy.post(f"{url}/predict", json=body(f"lag-busy-{uuid4().hex[:6]}", at))
            assert r.status_code == 200, r.text
        time.sleep(2.2)  # its next request publishes its clock (the upkeep, every 2 s)
        at += timedelta(minutes=1)
        assert busy.post(f"{url}/predict", json=body(f"lag-pub-{uuid4().hex[:6]}", at)).is_success
    workers = set()
    for i in range(16):
        at += timedelta(seconds=30)
        r = httpx.post(f"{url}/predict", json=body(f"lag-new-{i}-{uuid4().hex[:6]}", at),
                       headers=AUTH, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        workers.add(httpx.get(f"{url}/health", timeout=10).json()["process"])
    assert len(workers) == 2, "new connections reached one worker only"


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_both_workers_follow_the_admin_challenger_call(two_workers, champion, small_raw) -> None:
    """/admin/challenger reaches one worker; the other follows it once it scores."""
    url, _ = two_workers
    version = str(champion["registration"].version)
    r = httpx.post(f"{url}/admin/challenger", json={"mode": "shadow", "version": version},
                   headers=AUTH, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    modes: dict[int, str] = {}
    bodies = request_bodies(_stream(small_raw, 400))
    deadline = time.monotonic() + 60
    while len(modes) < 2 or set(modes.values()) != {"shadow"}:
        assert time.monotonic() < deadline, f"workers' challenger modes: {modes}"
        body = bodies.pop()  # new connections: either worker may answer
        reply = httpx.post(f"{url}/predict", json={"transactions": [body]}, headers=AUTH)
        assert reply.status_code == 200, reply.text
        health = httpx.get(f"{url}/health", timeout=10).json()
        modes[health["process"]] = health["challenger"]["mode"]
        time.sleep(0.2)
    r = httpx.post(f"{url}/admin/challenger", json={"mode": "off"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.redis
def test_a_hot_swap_is_announced_to_the_other_workers(champion) -> None:
    model = bentoml.models.get(champion["imported"].tag)
    bundle = ModelBundle.load(Path(model.path), model.info.metadata)
    prefix = f"test-{uuid4().hex[:12]}"
    one, other = (
        FraudScorer(bundle, state=_state(prefix)),
        FraudScorer(bundle, state=_state(prefix)),
    )
    try:
        assert other.announced_model() is None
        one.swap(
            dataclasses.replace(bundle, metadata={**bundle.metadata, "mlflow_model_version": "42"})
        )
        assert other.announced_model() == "42" != other.model_version
        late = FraudScorer(bundle, state=_state(prefix))  # started after it: serves its own
        assert late.announced_model() is None
    finally:
        _state(prefix).clear()


@pytest.mark.redis
def test_the_live_challenger_is_announced_to_the_other_workers(champion) -> None:
    """One worker starts a canary (the admin call), rolls it back, stops it: the other follows
    each step; a worker started later goes by its own settings."""
    model = bentoml.models.get(champion["imported"].tag)
    bundle = ModelBundle.load(Path(model.path), model.info.metadata)
    prefix = f"test-{uuid4().hex[:12]}"
    one, other = (
        HotSwap(FraudScorer(bundle, state=_state(prefix)), model.tag.name, 1) for _ in range(2)
    )
    version = one.scorer.model_version  # the champion as its own challenger
    try:
        one.load_challenger("canary", version, 0.25, RollbackPolicy(error_margin=0.02))
        one.follow_challenger()  # its own announcement: nothing to follow
        assert not one.challenger_following
        other.follow_challenger()
        wait_for(lambda: other.scorer.challenger is not None, 30, "the follow", 0.05)
        followed = other.scorer.challenger
        assert (followed.version, followed.mode, followed.share) == (version, "canary", 0.25)
        assert followed.policy == RollbackPolicy(error_margin=0.02) and followed.active

        mine = one.scorer.challenger  # fails a third of its transactions: rolls back
        mine.arms["canary"].attempted, mine.arms["canary"].errors = 300, 100
        assert "error rate" in (mine.check() or "")
        other.follow_challenger()
        wait_for(lambda: not followed.active, 30, "the roll-back", 0.05)
        assert followed.rolled_back == f"{mine.rolled_back} (in another worker)"

        one.load_challenger("off", None, 1.0, RollbackPolicy())
        other.follow_challenger()
        wait_for(lambda: other.scorer.challenger is None, 30, "the stop", 0.05)

        one.load_challenger("shadow", version, 1.0, RollbackPolicy())
        late = HotSwap(FraudScorer(bundle, state=_state(prefix)), model.tag.name, 1)
        late.follow_challenger()  # announced before it started: not its business
        assert not late.challenger_following and late.scorer.challenger is None
    finally:
        _state(prefix).clear()


def test_workers_share_the_stream_clock_through_redis() -> None:
    from serving.redis_state import RedisFeatureState

    state = RedisFeatureState.from_url(REDIS_URL, MS_PER_DAY, MS_PER_DAY, f"clk{free_port()}")
    try:
        one = ServiceClock(
            "stream", MS_PER_DAY, MS_PER_DAY, epoch_ms(START), state.coordination.stream_clock
        )
        one.advance(epoch_ms(START + DAY / 2))
        one.sync()
        # A worker started later (or restarted) from the same history resumes where one is.
        two = ServiceClock(
            "stream", MS_PER_DAY, MS_PER_DAY, epoch_ms(START), state.coordination.stream_clock
        )
        assert two.now_ms() == epoch_ms(START + DAY / 2)
        two.advance(epoch_ms(START + DAY))
        two.sync()
        one.sync()
        assert one.now_ms() == epoch_ms(START + DAY)
        one.sync()  # never back
        assert state.coordination.stream_clock(0) == epoch_ms(START + DAY)
    finally:
        state.clear()


def test_redis_buckets_are_shared_by_workers(keys: dict[str, Any]) -> None:
    """Two middlewares (two workers) on one Redis: together they admit the key's limit."""
    import redis

    prefix = f"test-rl-{free_port()}"
    one = ApiKeyAuth(slow_app(delay=0), keys["path"], REDIS_URL, prefix)
    two = ApiKeyAuth(slow_app(delay=0), keys["path"], REDIS_URL, prefix)

    async def both() -> list[int]:
        out = []
        for i in range(10):
            sc, chunks = request("/predict", keys["slow"])
            out.append((await call(one if i % 2 else two, sc, chunks))["status"])
        return out

    try:
        statuses = asyncio.run(both())
        assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_a_worker_left_behind_catches_up_when_it_would_refuse() -> None:
    """A worker that got no traffic while the others moved the stream on (keep-alive
    connections all held by them) must not refuse the stream's next transactions: it reads the
    shared clock before refusing, at most once every CATCH_UP_EVERY_S under a flood."""
    from serving.clock import CATCH_UP_EVERY_S
    from serving.redis_state import RedisFeatureState

    state = RedisFeatureState.from_url(REDIS_URL, MS_PER_DAY, MS_PER_DAY, f"clk{free_port()}")
    calls: list[int] = []

    def shared(t_ms: int) -> int:
        calls.append(t_ms)
        return state.coordination.stream_clock(t_ms)

    try:
        busy = ServiceClock("stream", 7 * MS_PER_DAY, MS_PER_DAY, epoch_ms(START), shared)
        idle = ServiceClock("stream", 7 * MS_PER_DAY, MS_PER_DAY, epoch_ms(START), shared)
        for day in range(1, 4):  # three days of stream through the busy worker alone
            busy.advance(epoch_ms(START + day * DAY))
            busy.sync()
        calls.clear()
        nxt = epoch_ms(START + 3 * DAY + DAY / 4)
        assert idle.problem(nxt) is None, "the idle worker refused the stream's next transaction"
        assert idle.now_ms() == epoch_ms(START + 3 * DAY) and len(calls) == 1
        # a time past the stream itself stays refused, and a flood of them costs one call
        too_far = epoch_ms(START + 5 * DAY)
        for _ in range(1000):
            assert "after the service clock" in (idle.problem(too_far) or "")
        assert len(calls) == 1
        time.sleep(CATCH_UP_EVERY_S)
        assert idle.problem(too_far) is not None and len(calls) == 2
    finally:
        state.clear()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.redis
def test_both_workers_follow_a_rule_set_put_in_force(two_workers, small_raw) -> None:
    """/admin/rules and /admin/lists reach one worker; it announces them, and the other reads
    the store again within seconds (FRAUD_RULES_REFRESH_S is 10 minutes here: not by polling)."""
    from training.core import rules

    url, _ = two_workers
    version = f"shared-{uuid4().hex[:6]}"
    ruleset = rules.RuleSet(version=version, rules=[*rules.default().rules])
    r = httpx.post(f"{url}/admin/rules", json={"rules": rules.dump(ruleset)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["changed"], r.text
    stream = _stream(small_raw, 400)
    terminal = str(stream["TERMINAL_ID"].iloc[0])
    r = httpx.post(f"{url}/admin/lists/blocked_terminals", json={"values": [terminal]},
                   headers=AUTH)  # fmt: skip
    assert r.status_code == 200, r.text
    seen: dict[int, tuple[str, int]] = {}
    bodies = request_bodies(stream)
    deadline = time.monotonic() + 30
    while len(seen) < 2 or set(seen.values()) != {(version, 1)}:  # the set and the list
        assert time.monotonic() < deadline, f"workers' rule sets: {seen}"
        reply = httpx.post(f"{url}/predict", json={"transactions": [bodies.pop()]}, headers=AUTH)
        assert reply.status_code == 200, reply.text
        health = httpx.get(f"{url}/health", timeout=10).json()
        seen[health["process"]] = (health["rules"]["version"], health["rules"]["lists"].get(
            "blocked_terminals", 0))  # fmt: skip
        time.sleep(0.2)
    answer = httpx.post(f"{url}/predict", json={"transactions": [bodies.pop()]}, headers=AUTH)
    assert answer.json()[0]["rule"] == "block-terminals"
