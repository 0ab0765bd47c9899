"""A private `redis-server` killed under load, then started again empty, behind a real
`bentoml serve` with two workers: never a 500; 503 + Retry-After (reject) or scores flagged
degraded (fallback) meanwhile; /readyz fails and /health names Redis; recovery without a
restart; the empty Redis is detected and warmed again from the model's history."""

from __future__ import annotations

import collections
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis

from training.core.schema import request_bodies

from .conftest import free_port
from .servers import AUTH, bento_server
from .services import PrivateRedis

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.redis]
OUTAGE_S = 5.0


@contextmanager
def redis_server(port: int, log: Path) -> Iterator[subprocess.Popen]:
    """A private redis-server without persistence (restarted, it comes back empty); its
    process, for the test to kill."""
    server = PrivateRedis(port, log)
    server.start()
    try:
        assert server.proc is not None
        yield server.proc
    finally:
        server.kill()


class Traffic(threading.Thread):
    """Single-transaction requests in time order from several clients, each sending a refused
    one again after its Retry-After; every answer's time, status, flag and Retry-After kept."""

    def __init__(self, url: str, bodies: list[dict], clients: int = 4) -> None:
        super().__init__(daemon=True)
        self.url, self.bodies, self.clients = url, bodies, clients
        self.halt = threading.Event()
        self.answers: list[tuple[float, int, bool, str | None]] = []  # t, status, degraded
        self.lock = threading.Lock()
        self.next = 0

    def take(self) -> dict | None:
        with self.lock:
            if self.next >= len(self.bodies):
                return None
            self.next += 1
            return self.bodies[self.next - 1]

    def client(self) -> None:
        with httpx.Client(timeout=10, headers=AUTH) as http:
            body = self.take()
            while not self.halt.is_set() and body is not None:
                r = http.post(f"{self.url}/predict", json={"transactions": [body]})
                degraded = r.status_code == 200 and r.json()[0]["degraded"]
                retry = r.headers.get("retry-after")
                with self.lock:
                    self.answers.append((time.monotonic(), r.status_code, degraded, retry))
                if r.status_code == 503 and retry:  # as a client should: the same one, later
                    time.sleep(float(retry))
                    continue
                body = self.take()
                time.sleep(0.002)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client) for _ in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def between(self, t0: float, t1: float) -> list[tuple[float, int, bool, str | None]]:
        with self.lock:
            return [a for a in self.answers if t0 <= a[0] < t1]


@pytest.fixture(scope="module")
def stream(small_raw: pd.DataFrame) -> list[dict]:
    """The 20 days after the model's history (~23,000 transactions: more than the test sends
    on a fast machine, where degraded answers take under a millisecond; traffic that ran out
    early would leave no request to show the re-warm), in time order, as /predict bodies."""
    from training.demo.simulate import simulate

    from .conftest import SMALL

    later = simulate(type(SMALL)(**{**SMALL.__dict__, "n_days": SMALL.n_days + 20}))
    fresh = later[later["TX_DATETIME"] > small_raw["TX_DATETIME"].max()]
    return request_bodies(fresh.reset_index(drop=True), id_prefix="fault-")


def outage(champion: Any, session_dir: Path, stream: list[dict], mode: str) -> dict[str, Any]:
    """Serve on a private Redis under load; kill Redis, start it again empty; the figures."""
    rport, port = free_port(), free_port()
    rlog = session_dir / f"redis-{mode}.log"
    env = {
        "FRAUD_PORT": str(port),
        "FRAUD_STATE_BACKEND": "redis",
        "FRAUD_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
        "FRAUD_WORKERS": "2",
        "FRAUD_STATE_FAILURE": mode,
        "BENTOML_DO_NOT_TRACK": "True",
    }
    out: dict[str, Any] = {}
    serve_log = session_dir / f"bento-serve-fault-{mode}.log"
    with redis_server(rport, rlog) as first, bento_server(port, env, serve_log) as url:
        warmed_keys = redis.Redis(port=rport).dbsize()
        traffic = Traffic(url, stream)
        traffic.start()
        time.sleep(2.0)
        t_kill = time.monotonic()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(1.0)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        health = httpx.get(f"{url}/health", timeout=10).json()
        out.update(ready_during=ready.status_code, health_during=health)
        time.sleep(OUTAGE_S - 1.0)
        with redis_server(rport, rlog):  # the same port, empty
            t_back = time.monotonic()
            # empty: what workers wrote since it came up (clock, buckets) is a few keys
            assert redis.Redis(port=rport).dbsize() < warmed_keys // 100
            deadline = t_back + 30
            while True:  # re-warmed and every worker ready again
                health = httpx.get(f"{url}/health", timeout=10).json()
                ready = httpx.get(f"{url}/readyz", timeout=10).status_code
                if health["status"] == "ok" and ready == 200:
                    break
                assert time.monotonic() < deadline, health
                time.sleep(0.1)
            t_ok = time.monotonic()
            time.sleep(6.5)  # traffic goes on past the bound (5 s after Redis and its re-warm)
            traffic.halt.set()
            traffic.join(30)
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            out.update(
                answers=traffic.answers,
                t_kill=t_kill,
                t_back=t_back,
                t_ok=t_ok,
                warmed_keys=warmed_keys,
                keys_after=redis.Redis(port=rport).dbsize(),
                metrics=metrics,
            )
    return out


def metric(out: dict[str, Any], series: str) -> float:
    """The value of one series in the /metrics text the outage ended with (0 when absent)."""
    for line in out["metrics"].splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def recovery_s(out: dict[str, Any]) -> float:
    """From Redis's return to the last answer that was not a normal 200."""
    bad = [t for t, s, d, _ in out["answers"] if t >= out["t_back"] and (s != 200 or d)]
    return max(bad, default=out["t_back"]) - out["t_back"]


def recovered_in_time(out: dict[str, Any]) -> bool:
    """Within 5 s of Redis's return, beyond the time the re-warm of the emptied store took
    (as the service measured it: writing its history back is Redis's own work, ~50 µs a
    transaction here, and no answer may use an unfilled state)."""
    rewarm = metric(out, "fraud_state_last_rewarm_seconds")
    assert 0 < rewarm < 30, rewarm
    return recovery_s(out) <= 5.0 + rewarm


def summary(out: dict[str, Any]) -> str:
    answers = out["answers"]
    by = collections.Counter(f"{s}{' degraded' if d else ''}" for _, s, d, _ in answers)
    after = [a for a in answers if a[0] >= out["t_back"]]
    first_normal = next((a[0] for a in after if a[1] == 200 and not a[2]), None)
    return (
        f"{len(answers)} answers {dict(by)}; after Redis returned: first normal answer "
        f"{(first_normal or float('nan')) - out['t_back']:.2f}s, last refused or degraded "
        f"{recovery_s(out):.2f}s, /health ok and /readyz 200 {out['t_ok'] - out['t_back']:.2f}s, "
        f"re-warm {metric(out, 'fraud_state_last_rewarm_seconds'):.2f}s; "
        "keys warmed "
        f"{out['warmed_keys']:,} -> after re-warm {out['keys_after']:,}"
    )


def test_reject_mode_answers_503_then_recovers_and_rewarms(
    champion, session_dir: Path, stream: list[dict]
) -> None:
    out = outage(champion, session_dir, stream, "reject")
    print(summary(out))
    answers = out["answers"]
    statuses = {s for _, s, _, _ in answers}
    assert statuses <= {200, 503}, collections.Counter(s for _, s, _, _ in answers)
    refused = [a for a in answers if a[1] == 503]
    assert refused, "no 503 while Redis was down"
    assert all(a[3] for a in refused), "a 503 without Retry-After"
    assert not any(d for _, _, d, _ in answers)  # reject mode never scores without history
    assert out["ready_during"] == 503
    during = out["health_during"]
    assert during["status"] == "degraded" and "Redis" in during["state_store"]["problem"]
    assert recovered_in_time(out)  # the last refusal: within 5 s of Redis and its re-warm
    settled = out["t_back"] + 5.0 + metric(out, "fraud_state_last_rewarm_seconds")
    after = [a for a in answers if a[0] >= settled]
    assert after and all(a[1] == 200 for a in after)
    assert out["keys_after"] > out["warmed_keys"] // 2  # the history is back in Redis
    assert metric(out, "fraud_state_rewarms_total") >= 1  # per worker: warmed or waited
    assert metric(out, 'fraud_degraded_transactions_total{outcome="rejected"}') >= len(refused)


def test_fallback_mode_answers_flagged_scores(
    champion, session_dir: Path, stream: list[dict]
) -> None:
    out = outage(champion, session_dir, stream, "fallback")
    print(summary(out))
    answers = out["answers"]
    assert {s for _, s, _, _ in answers} == {200}
    outage_answers = [a for a in answers if out["t_kill"] + 0.5 <= a[0] < out["t_back"]]
    assert outage_answers and all(d for _, _, d, _ in outage_answers)
    assert recovered_in_time(out)
    settled = out["t_back"] + 5.0 + metric(out, "fraud_state_last_rewarm_seconds")
    assert not any(d for t, _, d, _ in answers if t >= settled)
    fallback = metric(out, 'fraud_degraded_transactions_total{outcome="fallback"}')
    assert fallback >= len(outage_answers)
    assert out["ready_during"] == 503


def _connections_waiting(listener: socket.socket) -> int:
    """How many connections ``listener`` has queued (accepted here and closed)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_redis_state_calls_are_bounded_when_redis_is_unreachable() -> None:
    """A Redis that does not answer (a listening socket that never replies): one call costs
    the 50 ms timeout, and for the next RETRY_S every call fails at once."""

    from serving.redis_state import RETRY_S, RedisFeatureState
    from serving.state import StateUnavailable

    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(128)  # accepts connections, never answers
        port = black_hole.getsockname()[1]
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            port=port,
            socket_timeout=0.05,
            socket_connect_timeout=0.05,
            retry=Retry(NoBackoff(), 0),
        )
        state = RedisFeatureState(client, 86_400_000, 86_400_000, "x")
        t0 = time.perf_counter()
        with pytest.raises(StateUnavailable, match="unreachable"):
            state.customer_histories(["c1"])
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(100):
            with pytest.raises(StateUnavailable):
                state.customer_histories(["c1"])
        fast = (time.perf_counter() - t1) / 100
        print(f"first call {first * 1000:.1f} ms, then {fast * 1e6:.1f} µs a call")
        assert first < 1.0  # bounded by the 50 ms timeouts, not redis-py's 5 s default
        assert _connections_waiting(black_hole) == 1  # the 100 calls after it tried nothing
        time.sleep(RETRY_S + 0.05)
        with pytest.raises(StateUnavailable):  # tried again after RETRY_S: still nothing
            state.customer_histories(["c1"])
