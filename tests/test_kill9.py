"""Kill -9, proven: `bentoml serve` with its decisions logged to PostgreSQL (a cluster of the
test's own), driven at ~500 single-transaction requests a second while its serving worker is
SIGKILLed three times at random moments (serving.supervisor restarts it), then while that PostgreSQL
is stopped for 10 s. Every transaction answered 200 is in the database exactly once, and the
last worker's state equals that of a twin that was never killed, fed the same logged stream."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import httpx
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from serving.model_bundle import ModelBundle
from serving.online_features import records_from_frame
from serving.scorer import FraudScorer
from training.core import decision_store as ds
from training.core import schema
from training.demo.replay import next_days
from training.demo.simulate import save_config

from .conftest import SMALL, free_port
from .servers import AUTH, bento_server, supervised, wait_for
from .services import PrivatePostgres

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.postgres]
RATE = 500  # requests a second offered
SECONDS = 30
THREADS = 24


@dataclass
class Drive:
    """Single-transaction /predict requests at a fixed rate from a pool of threads; which
    transaction got which answer."""

    url: str
    bodies: list[dict]
    rate: float = RATE
    answered: list[str] = field(default_factory=list)  # 200
    failed: dict[str, int] = field(default_factory=dict)  # status or error -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seconds: float, events: list[tuple[float, object]] = ()) -> float:  # type: ignore[assignment]
        """Send for ``seconds`` (or until the bodies run out); ``events``: (at s, callable) run
        from the driver's clock. Returns the achieved request rate."""
        it = iter(self.bodies)
        t0 = time.monotonic()
        sent = [0]

        def worker() -> None:
            client = httpx.Client(headers=AUTH, timeout=10)
            while True:
                with self.lock:
                    body = next(it, None)
                    k = sent[0]
                    sent[0] += 1
                if body is None:
                    return
                due = t0 + k / self.rate
                if due - time.monotonic() > 0:
                    time.sleep(due - time.monotonic())
                if due - t0 > seconds:
                    return
                try:
                    r = client.post(f"{self.url}/predict", json={"transactions": [body]})
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with self.lock:
                    if key == "200":
                        self.answered.append(body["transaction_id"])
                    else:
                        self.failed[key] = self.failed.get(key, 0) + 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for at, action in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            action()  # type: ignore[operator]
        for t in threads:
            t.join(seconds + 60)
        return (len(self.answered) + sum(self.failed.values())) / (time.monotonic() - t0)


def serving_worker(port: int) -> psutil.Process:
    """The serving worker on ``port``: the child of the circus arbiter holding its socket."""
    workers = supervised(port, "_bentoml_impl.worker.service")
    if not workers:
        raise AssertionError(f"no serving worker on port {port}")
    return workers[0]


def live_worker(port: int, killed: list[int]) -> bool:
    try:
        return serving_worker(port).pid not in killed
    except AssertionError:
        return False


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stored(url: str, ids: list[str]) -> tuple[int, int]:
    """(rows for these ids, rows in all) in the store."""
    engine = ds.engine_for(url)
    try:
        with engine.connect() as conn:
            return ds.count(conn, ds.decisions, ids), ds.count(conn, ds.decisions)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("kill9-data")
    save_config(SMALL, root)
    return next_days(root, 30)  # more than the two phases send


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory) -> Iterator[dict]:
    pg = PrivatePostgres(free_port())
    work = tmp_path_factory.mktemp("kill9")
    port = free_port()
    env = {"BENTOML_DO_NOT_TRACK": "True", "FRAUD_DECISION_DB_URL": pg.url}
    try:
        pg.start()
        with bento_server(port, env, work / "serve.log") as url:
            yield {"url": url, "port": port, "store": pg.url, "pg": pg, "sent": []}
    finally:
        pg.close()


def test_three_kill_9s_lose_no_answered_decision(served: dict, stream: pd.DataFrame) -> None:
    url, port, store = served["url"], served["port"], served["store"]
    bodies = schema.request_bodies(stream.head(RATE * SECONDS))
    drive = Drive(url, bodies)
    rng = random.Random(20)
    moments = sorted(rng.uniform(2, SECONDS - 4) for _ in range(3))
    while min(b - a for a, b in itertools.pairwise(moments)) < 6:  # room to restart
        moments = sorted(rng.uniform(2, SECONDS - 4) for _ in range(3))
    killed: list[int] = []
    back_s: list[float] = []  # kill -9 to the new worker answering

    def time_back(t_kill: float) -> None:
        while not (live_worker(port, killed) and ready(url)):
            time.sleep(0.05)
        back_s.append(time.monotonic() - t_kill)

    def kill() -> None:  # the serving worker: started again and answering, not one starting
        wait_for(lambda: live_worker(port, killed) and ready(url), 60, "no worker to kill", 0.5)
        worker = serving_worker(port)
        killed.append(worker.pid)
        worker.kill()  # SIGKILL: no shutdown hook, no flush, no goodbye
        threading.Thread(target=time_back, args=(time.monotonic(),), daemon=True).start()

    t0 = time.monotonic()
    rate = drive.run(SECONDS, [(m, kill) for m in moments])
    done_s = time.monotonic() - t0
    wait_for(lambda: live_worker(port, killed), 120, "no new worker", 0.5)
    wait_for(lambda: ready(url), 120, "not ready", 0.5)
    answered = sorted(set(drive.answered))
    wait_for(
        lambda: stored(store, answered)[0] == len(answered),
        60,
        f"answered decisions missing from the store: {len(answered) - stored(store, answered)[0]}",
        0.5,
    )
    in_store, total = stored(store, answered)
    print(
        f"\nkill -9 x3 at {[round(m, 1) for m in moments]} s (or once the new worker was "
        f"ready), {done_s:.0f} s, {rate:.0f} req/s offered: "
        f"{len(drive.answered)} answered, {in_store} of them in the store, lost "
        f"{len(answered) - in_store}, duplicated {len(drive.answered) - len(answered)}; "
        f"not answered {drive.failed}; {total} decisions stored in all; serving again "
        f"{[round(b, 1) for b in back_s]} s after each kill"
    )
    assert len(killed) == 3 and len(drive.answered) == len(answered)
    # restarted by serving.supervisor's circus check (1 s, BentoML's 10 s), then the worker's
    # own start (imports, model, warm-up): a bound loose enough for a loaded machine
    assert len(back_s) == 3 and max(back_s) < 30
    assert in_store == len(answered)
    assert sum(drive.failed.values()) < len(bodies) / 2  # the service did answer in between
    served["sent"] = bodies


def test_the_database_stopped_10_s_delays_but_loses_nothing(served: dict, stream: pd.DataFrame):  # type: ignore[no-untyped-def]
    url, store, pg = served["url"], served["store"], served["pg"]
    offset = len(served["sent"]) or RATE * SECONDS
    bodies = schema.request_bodies(stream.iloc[offset : offset + RATE * 20])
    drive = Drive(url, bodies)
    backlog: list[int] = []

    def watch() -> None:
        backlog.append(
            httpx.get(f"{url}/health", timeout=5).json()["decision_log"]["backlog_bytes"]
        )

    def up() -> None:
        watch()
        pg.start()

    rate = drive.run(20, [(4, pg.stop), (9, watch), (14, up)])
    answered = sorted(set(drive.answered))
    t0 = time.monotonic()
    wait_for(lambda: stored(store, answered)[0] == len(answered), 60, "backlog not delivered", 0.5)
    delivered_s = time.monotonic() - t0
    print(
        f"\nPostgreSQL stopped 10 s, {rate:.0f} req/s offered: {len(answered)} answered "
        f"({drive.failed or 'none'} not), backlog during the outage {backlog} bytes, all "
        f"{len(answered)} stored {delivered_s:.1f} s after the traffic ended, lost 0"
    )
    assert max(backlog) > 0  # the journal held what the store could not take
    assert not drive.failed  # serving went on while the store was down
    served["sent"] = served["sent"] + bodies


def test_the_last_worker_scores_as_a_twin_that_was_never_killed(
    served: dict, champion, stream: pd.DataFrame
) -> None:
    """The twin scores every logged decision in stream order (what a never-killed worker
    would have seen: the answered ones and those logged just before a kill); then both score
    the same probes."""
    url, store = served["url"], served["store"]
    engine = ds.engine_for(store)
    with engine.connect() as conn:
        logged = conn.execute(sa.select(ds.decisions.c.transaction_id)).scalars().all()
    engine.dispose()
    # the history the kills and the outage left: without it there is nothing to compare
    assert len(logged) > 1_000, f"{len(logged)} decisions logged: the tests before it did not run"
    is_logged = stream[schema.TRANSACTION_ID].isin(set(logged)).to_numpy()
    seen = stream[is_logged]
    model = bentoml.models.get(champion["imported"].tag)
    twin = FraudScorer(ModelBundle.load(Path(model.path), model.info.metadata))
    twin.warm()
    records = records_from_frame(seen)
    for start in range(0, len(records), 50):
        twin.score(records[start : start + 50])
    probe = stream.iloc[int(is_logged.nonzero()[0].max()) + 1_000 :].head(40).copy()
    probe[schema.TRANSACTION_ID] = "probe-" + probe[schema.TRANSACTION_ID]
    answer = httpx.post(
        f"{url}/predict",
        json={"transactions": schema.request_bodies(probe)},
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    got = [a["fraud_probability"] for a in answer.json()]
    expected = twin.score(records_from_frame(probe)).proba.tolist()
    assert got == pytest.approx(expected, abs=1e-9)
    health = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["decision_log"]
    print(f"\nlast worker replayed {health['replayed']} logged decisions at start")
    assert health["replayed"] and health["replay_error"] is None
