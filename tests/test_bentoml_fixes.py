"""The request-path fixes to BentoML 1.4 (serving/bentoml_fixes.py), against the real classes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bentoml
import pandas as pd
import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import bentoml_fixes
from serving.api_models import Prediction, Transaction

from .servers import AUTH, write_key_file

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def patched() -> Iterator[None]:
    # metrics_pid needs prometheus_client's multiprocess mode (bentoml serve); tested below
    assert bentoml_fixes.apply() == [
        "timeout_timer",
        "local_call",
        "response_headers",
        "root_json",
        "model_fields",
        "idle_dispatch",
        "gather_batch",
    ]
    yield
    bentoml_fixes.revert()
    assert bentoml_fixes.applied() == []


def _call(middleware: TimeoutMiddleware, call: Any, delay: float) -> tuple[list[int], int]:
    """One HTTP request through ``call``; (statuses sent, live timers left on the loop)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware.app = app
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    loop = asyncio.new_event_loop()  # the stdlib loop: its timer heap can be inspected
    try:
        loop.run_until_complete(call(middleware, {"type": "http"}, receive, send))
        live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    finally:
        loop.close()
    return statuses, len(live)


def test_stock_middleware_leaves_a_timer_per_request_and_the_fix_does_not() -> None:
    stock = bentoml_fixes.original("timeout_timer")
    assert _call(TimeoutMiddleware(None, timeout=30), stock, 0) == ([200], 1)  # the leak
    assert _call(TimeoutMiddleware(None, timeout=30), TimeoutMiddleware.__call__, 0) == ([200], 0)


def test_patched_middleware_still_answers_504_after_the_timeout() -> None:
    statuses, live = _call(TimeoutMiddleware(None, timeout=0.05), TimeoutMiddleware.__call__, 2)
    assert statuses == [504] and live == 0


class _Api:
    @bentoml.api
    def echo(self, x: int) -> int:
        return x


def test_local_caller_is_built_once_per_instance_and_still_works() -> None:
    a, b = _Api(), _Api()
    assert a.echo.local is a.echo.local  # type: ignore[attr-defined]
    assert a.echo.local is not b.echo.local  # type: ignore[attr-defined]
    assert a.echo.local(3) == 3 and b.echo(x=4) == 4  # type: ignore[attr-defined]


def test_response_headers_are_the_stock_ones() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.responses import Response

    factory = SimpleNamespace(service=SimpleNamespace(name="fraud_detector"))
    stock, fixed = Response(b"{}"), Response(b"{}")
    bentoml_fixes.original("response_headers")(factory, stock)
    ServiceAppFactory._add_response_headers(factory, fixed)  # type: ignore[arg-type]
    assert fixed.headers["server"] == "BentoML Service/fraud_detector"
    assert dict(fixed.headers) == dict(stock.headers)


def test_list_responses_are_the_same_json_in_one_dump() -> None:
    from _bentoml_sdk.io_models import ensure_io_descriptor

    rows = [
        {"transaction_id": "tx-é-1", "fraud_probability": 0.1 + 0.2, "is_fraud": True},
        {"transaction_id": "2", "fraud_probability": 1e-300, "is_fraud": False},
    ]
    model = ensure_io_descriptor(list[Prediction]).model_validate(
        [{**r, "model_version": "7"} for r in rows]
    )
    fixed = model.model_dump_json()
    assert json.loads(fixed) == json.loads(bentoml_fixes.original("root_json")(model))
    assert json.loads(fixed)[0]["fraud_probability"] == 0.1 + 0.2  # shortest round-trip repr
    assert model.model_dump_json(exclude={"x"}) == bentoml_fixes.original("root_json")(
        model, exclude={"x"}
    )  # other arguments: the stock path


def test_input_fields_are_read_without_a_warning_per_request() -> None:
    from _bentoml_sdk.io_models import IODescriptor, ensure_io_descriptor
    from pydantic import BaseModel

    class Plain(BaseModel):
        x: int

    with pytest.warns(DeprecationWarning):  # pydantic on any other model instance
        assert set(Plain(x=1).model_fields) == {"x"}

    def predict(transactions: list[Transaction], limit: int = 3) -> None: ...

    spec = IODescriptor.from_input(predict)  # the input model BentoML builds for an API
    data = spec.model_validate({"transactions": [], "limit": 5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.model_fields is spec.model_fields  # as api_endpoint reads it
        assert list(data.model_fields) == ["transactions", "limit"]
        assert {k: getattr(data, k) for k in data.model_fields} == {"transactions": [], "limit": 5}
    root = ensure_io_descriptor(list[Prediction])
    assert list(root.model_fields) == ["root"] == list(root.model_validate([]).model_fields)


def test_metric_writes_use_a_cached_pid_that_follows_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import values
    from prometheus_client.multiprocess import MultiProcessCollector

    calls = []

    def getpid() -> int:
        calls.append(1)
        return os.getpid()

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class = values.MultiProcessValue(process_identifier=getpid)
    assert bentoml_fixes.cache_metrics_pid(value_class)
    calls.clear()
    value = value_class("counter", "c", "c_total", (), (), "help")
    for _ in range(100):
        value.inc(1)
    assert len(calls) == 0  # stock: one getpid() per write
    child = os.fork()
    if child == 0:  # the child must write to its own file, not into the parent's
        value.inc(5)
        os._exit(0)
    os.waitpid(child, 0)
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files == sorted([f"counter_{os.getpid()}.db", f"counter_{child}.db"])
    totals = {
        s.name: s.value
        for m in MultiProcessCollector(None, str(tmp_path)).collect()
        for s in m.samples
    }
    assert totals == {"c_total": 105.0}


def _lone_request_seconds(learned_wait: float) -> float:
    """A real CorkDispatcher (BentoML's adaptive batcher) past its start-up training, whose
    optimizer then learned that batches started ``learned_wait`` after their first request
    (as under load, queued behind the batch in flight): how long one request, alone and with no
    batch in flight, takes to be answered."""

    async def run() -> float:
        dispatcher: CorkDispatcher[int, int] = CorkDispatcher(
            max_latency_in_ms=1000,
            max_batch_size=100,
            fallback=lambda: -1,
            get_batch_size=lambda _: 1,
        )

        async def echo(batch: Any) -> list[int]:
            return list(batch)

        call = dispatcher(echo)
        for k in range(20):  # the optimizer's training batches (sizes 1, 2, 3), then some
            assert await call(k) == k
        for _ in range(50):
            dispatcher.optimizer.log_outbound(n=8, wait=learned_wait, duration=0.002)
        dispatcher.optimizer.trigger_refresh()
        start = time.perf_counter()
        assert await call(99) == 99
        return time.perf_counter() - start

    return asyncio.run(run())


def test_a_lone_request_is_dispatched_without_the_learned_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bentoml._internal.marshal.dispatcher import Optimizer

    assert _lone_request_seconds(0.5) < 0.25  # dispatched at once (~1 ms)
    with monkeypatch.context() as m:  # stock: the request idles for the learned wait
        m.delattr(Optimizer, "wait")
        assert _lone_request_seconds(0.5) >= 0.4


def _batches_of_a_stream(span: int) -> tuple[list[int], float]:
    """A real CorkDispatcher past its start-up training, idle; one request arrives, then
    one more on each of the next ``span`` event-loop iterations (as
    the worker parses requests that came in together). The sizes of the batches that
    answered them, and how long the first request waited for its batch to start."""

    async def run() -> tuple[list[int], float]:
        dispatcher: CorkDispatcher[int, int] = CorkDispatcher(
            max_latency_in_ms=1000,
            max_batch_size=1000,
            fallback=lambda: -1,
            get_batch_size=lambda _: 1,
        )
        sizes: list[int] = []
        started: list[float] = []

        async def echo(batch: Any) -> list[int]:
            sizes.append(len(batch))
            started.append(time.perf_counter())
            return list(batch)

        call = dispatcher(echo)
        for k in range(20):  # the optimizer's training batches
            assert await call(k) == k
        sizes.clear()
        started.clear()
        t0 = time.perf_counter()
        first = asyncio.ensure_future(call(0))
        rest = []
        for i in range(span):
            await asyncio.sleep(0)
            rest.append(asyncio.ensure_future(call(i)))
        assert await first == 0
        assert await asyncio.gather(*rest) == list(range(span))
        return sizes, started[0] - t0

    return asyncio.run(run())


def test_a_batch_takes_in_the_requests_the_loop_is_about_to_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes, _ = _batches_of_a_stream(span=6)
    assert sizes == [7]  # the first request and the six queued right after it
    with monkeypatch.context() as m:  # stock: the first request leaves alone
        m.setattr(CorkDispatcher, "outbound_call", bentoml_fixes.original("gather_batch"))
        stock, _ = _batches_of_a_stream(span=6)
    assert stock[0] < 7 and sum(stock) == 7


def test_a_stream_without_pause_is_still_cut_into_batches() -> None:
    """Requests arriving on every loop iteration without end: the first batch does not wait
    for the stream to stop (it would wait ~0.1-0.3 s for 20,000 requests)."""
    span = 20_000
    sizes, _ = _batches_of_a_stream(span=span)
    assert len(sizes) > 1 and sizes[0] < span
    assert sum(sizes) == span + 1


class _SteppedClock:
    """``time.time`` for :func:`bentoml_fixes.gather`: advanced by hand, one step per event-loop
    iteration, so the gather limit is tested without measuring wall time (a GC pause or a busy
    machine cannot change the outcome)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now


STEP_S = 1 / 1024  # a binary fraction: the stepped clock adds up exactly


@pytest.mark.parametrize("steps", [3, 10])
def test_a_batch_waits_for_no_more_than_the_gather_limit(
    monkeypatch: pytest.MonkeyPatch, steps: int
) -> None:
    """One request more on every loop iteration, the clock a step further on each: the batch
    starts when the clock reaches the first request's ``enqueue_time`` + the limit, and takes
    in exactly the requests queued until then."""
    clock = _SteppedClock()
    monkeypatch.setattr(bentoml_fixes, "time", clock)
    monkeypatch.setattr(bentoml_fixes, "GATHER_LIMIT_S", steps * STEP_S)
    queue: list[int] = []
    dispatcher = SimpleNamespace(
        _queue=queue,
        max_batch_size=10_000,
        max_latency=1.0,
        get_batch_size=lambda _: 1,
        _get_inputs=lambda n: tuple(queue.pop(0) for _ in range(min(n, len(queue)))),
    )
    first = SimpleNamespace(enqueue_time=clock.now, data=0)

    async def run() -> tuple[Any, ...]:
        async def stream() -> None:
            for i in range(1, 1_000):
                queue.append(i)
                clock.now += STEP_S
                await asyncio.sleep(0)

        feeder = asyncio.ensure_future(stream())
        await asyncio.sleep(0)
        batch = await bentoml_fixes.gather(dispatcher, (first,))
        feeder.cancel()
        return batch

    batch = asyncio.run(run())
    assert batch[0] is first
    assert list(batch[1:]) == list(range(1, steps + 1))  # one a step, up to the limit


def _fresh(code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter (no fix applied yet); the JSON its last line prints.
    ``targets()`` there maps every fix's targets to the object found at each."""
    prelude = (
        "import json, logging\n"
        "from serving import bentoml_fixes as bf\n"
        "def targets():\n"
        "    found = {}\n"
        "    for fix in bf.FIXES:\n"
        "        for t in fix.shapes:\n"
        "            owner, attr = bf._resolve(t)\n"
        "            found[t] = id(vars(owner).get(attr))\n"
        "    return found\n"
        "warnings = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): warnings.append(record.getMessage())\n"
        "logging.getLogger('bentoml.fraud_service').addHandler(Keep(logging.WARNING))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={**os.environ, **(env or {})},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fixes_can_be_skipped_by_name() -> None:
    """``FRAUD_BENTOML_FIXES_SKIP`` reaches apply(): a skipped fix leaves BentoML's class as
    shipped; an unknown name is refused, naming the setting and the known fixes."""
    applied, patched_wait = _fresh(
        "from bentoml._internal.marshal.dispatcher import Optimizer\n"
        "from training.core.config import get_settings\n"
        "applied = bf.apply(skip=get_settings().skipped_fixes())\n"
        "print(json.dumps([applied, 'wait' in vars(Optimizer)]))\n",
        {"FRAUD_BENTOML_FIXES_SKIP": " idle_dispatch,root_json "},
    )
    assert "idle_dispatch" not in applied and "root_json" not in applied
    assert "timeout_timer" in applied and not patched_wait
    with pytest.raises(ValueError, match=r"FRAUD_BENTOML_FIXES_SKIP.*no_such_fix.*gather_batch"):
        bentoml_fixes.apply(skip={"no_such_fix"})


def test_the_tested_version_is_the_locked_and_packaged_one() -> None:
    """The version the shapes were taken on is the one uv.lock installs and the Bento pins."""
    lock = (PROJECT / "uv.lock").read_text()
    locked = re.search(r'name = "bentoml"\nversion = "([^"]+)"', lock)
    assert locked and locked.group(1) == bentoml_fixes.TESTED_BENTOML == bentoml.__version__
    assert f'"bentoml=={bentoml_fixes.TESTED_BENTOML}"' in (PROJECT / "bentofile.yaml").read_text()


def test_another_bentoml_version_patches_nothing_and_says_so() -> None:
    """A BentoML other than the tested one (even a patch release: an upstream fix to a method
    replaced whole would be overwritten) is left exactly as shipped, with one warning."""
    before, after, applied, warnings = _fresh(
        "import bentoml\n"
        "before = targets()\n"
        "bentoml.__version__ = '1.4.41'\n"
        "applied = bf.apply()\n"
        "print(json.dumps([before, targets(), applied, warnings]))\n"
    )
    assert applied == [] and after == before
    assert len(warnings) == 1 and "1.4.41" in warnings[0] and "1.4.40" in warnings[0]


def test_a_target_that_changed_shape_is_skipped_with_one_warning_naming_it() -> None:
    """An edited method (gather_batch's target) and a renamed one (timeout_timer relies on
    ``_set_timer_out``) each skip their fix, which reports nothing applied; the rest apply."""
    swapped, timer_call_kept, applied, warnings = _fresh(
        "from bentoml._internal.marshal.dispatcher import CorkDispatcher\n"
        "from bentoml._internal.server.http.traffic import TimeoutMiddleware as TM\n"
        "async def outbound_call(self, inputs_info, training=False):  # upstream edited it\n"
        "    return None\n"
        "CorkDispatcher.outbound_call = outbound_call\n"
        "TM._timer_expired = TM._set_timer_out  # upstream renamed it\n"
        "del TM._set_timer_out\n"
        "stock_call = TM.__call__\n"
        "applied = bf.apply()\n"
        "print(json.dumps([CorkDispatcher.outbound_call is outbound_call,\n"
        "                  TM.__call__ is stock_call, applied, warnings]))\n"
    )
    assert swapped and timer_call_kept
    assert "gather_batch" not in applied and "timeout_timer" not in applied
    assert {"local_call", "root_json", "idle_dispatch"} <= set(applied)
    assert len(warnings) == 2
    assert any("gather_batch" in w and "CorkDispatcher.outbound_call" in w for w in warnings)
    assert any("timeout_timer" in w and "_set_timer_out" in w for w in warnings)


def test_revert_restores_bentoml_as_shipped() -> None:
    before, during, after, reverted = _fresh(
        "before = targets()\n"
        "bf.apply()\n"
        "during = targets()\n"
        "reverted = bf.revert()\n"
        "print(json.dumps([before, during, targets(), reverted]))\n"
    )
    assert during != before and after == before
    assert sorted(reverted) == sorted(
        ["timeout_timer", "local_call", "response_headers", "root_json", "model_fields",
         "idle_dispatch", "gather_batch"]
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("import bentoml; bentoml.__version__ = '1.4.41'\n", []),
        (
            "from bentoml._internal.marshal.dispatcher import CorkDispatcher\n"
            "async def outbound_call(self, inputs_info, training=False):\n"
            "    return await CorkDispatcher._stock(self, inputs_info, training)\n"
            "CorkDispatcher._stock = CorkDispatcher.outbound_call\n"
            "CorkDispatcher.outbound_call = outbound_call\n",
            ["timeout_timer", "local_call", "response_headers", "root_json", "model_fields",
             "idle_dispatch"],
        ),
    ],
    ids=["other-version", "changed-shape"],
)  # fmt: skip
def test_the_service_still_answers_without_its_fixes(
    champion, small_raw, tmp_path: Path, setup: str, expected
) -> None:
    """The real service, built in process on BentoML's own ASGI app (request path, adaptive
    batcher), scores a transaction; ``/health`` lists exactly the fixes in force."""
    example = Transaction.model_config["json_schema_extra"]["example"]
    at = small_raw["TX_DATETIME"].max() + pd.Timedelta(hours=1)  # on the service's clock
    body = {"transactions": [{**example, "tx_datetime": at.isoformat()}]}
    status, answer, health = _fresh(
        setup + "from starlette.testclient import TestClient\n"
        "import service\n"
        "with TestClient(service.FraudDetector.to_asgi()) as client:\n"
        f"    r = client.post('/predict', json={body!r}, headers={AUTH!r})\n"
        "    h = client.get('/health').json()\n"
        "print(json.dumps([r.status_code, r.json(), h]))\n",
        {
            "FRAUD_API_KEYS_FILE": str(write_key_file(tmp_path)),
            "FRAUD_JOURNAL_DIR": str(tmp_path / "journal"),
            "FRAUD_DECISION_DB_URL": f"sqlite:///{tmp_path / 'decisions.db'}",
        },
    )
    assert status == 200 and 0.0 <= answer[0]["fraud_probability"] <= 1.0
    assert health["bentoml_fixes"] == expected
