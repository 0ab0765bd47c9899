"""Small, version-guarded patches to BentoML 1.4's request path (see README "Performance").

All were found with py-spy on the serving worker and are written to be sent upstream:

* **Request timers cancelled.** ``TimeoutMiddleware`` arms a ``call_later(traffic.timeout)``
  timer for every request and never cancels it: at 2,500 req/s with the 30 s timeout that is
  ~75,000 live timer handles, futures and contexts, which every full garbage collection walks
  (gen-2 passes grew from 5 to 18 ms within 30 s of traffic). The patched middleware behaves
  the same (504 after the timeout) and cancels the timer once the request is answered.
* **One local caller per API method.** ``APIMethod.__get__`` rebuilds a wrapper with
  ``inspect.signature`` on every attribute access: two or three times per request (~4 % of the
  worker's CPU at peak). The wrapper depends only on (method, instance), so it is cached.
* **Response headers without dependency injection.** ``_add_response_headers`` is decorated
  with simple_di's ``@inject``, which binds an ``inspect.Signature`` on every call to look up
  a logging format that never changes in a running server; it is resolved once.
* **JSON responses dumped once.** ``IORootModel.model_dump_json`` (every list-returning API)
  builds Python objects with ``model_dump(mode="json")`` and then encodes them with the
  stdlib ``json.dumps``; pydantic-core writes the same JSON (compact) in one call.
* **Metric writes without a syscall each** (prometheus_client's multiprocess mode, which
  BentoML turns on). Every counter/gauge/histogram write calls ``os.getpid()`` to notice a
  fork: with BentoML's per-request metrics that is 6-8 syscalls a request, ~7 % of a no-op
  worker's CPU here (py-spy ``--native``). The pid is cached and refreshed after a fork
  (``os.register_at_fork``), so a forked child still gets its own files.
* **Input fields read from the class.** ``api_endpoint`` reads ``input_data.model_fields``
  on the request's input model: pydantic >= 2.11 deprecates that on instances and answers
  each access with ``warnings.warn`` (~1.4 % of the worker's CPU here; the warning itself is
  shown once, the filter work is done every request). IO descriptors now answer
  ``model_fields`` from their class, on instances too, without the warning.
* **No idle wait before a batch.** The adaptive batcher (``CorkDispatcher``) holds a request
  that finds no batch in flight while ``n * (wn + 1 ms + o_a) <= 0.95 * wait``, polling every
  millisecond, where ``wait`` is the mean time the first request of the last 50 batches waited
  before its batch started. That mean is mostly queueing behind the batch in flight under load,
  so after a busy spell every lone request idles for it, and it decays by ~5 % per refresh
  (one per 5 s), down to a floor of one or two 1 ms polling ticks that it never leaves: here a
  single client's median latency on the no-op was 13 ms after a burst of load and ~3 ms at
  rest, for ~0.6 ms of work. With at most one batch in flight (BentoML's semaphore of 1),
  waiting while idle only adds latency: requests still queue into batches while a batch runs.
  ``Optimizer.wait`` reads 0, so a request meeting an idle worker is dispatched at once; the
  1 ms polling while a batch runs and the ``max_latency_ms`` deadline are unchanged. Measured
  (interleaved A/B, ``python -m tests.bench.ab``): one client right after load, service median
  9.5 -> 1.1 ms; ~500 req/s in unsynchronised arrivals, median 2.2 -> 1.5 ms, p99 9.6 -> 5.9;
  peak unchanged (2,410 -> 2,387 req/s). The cost: under synchronised bursts (hey's 50 clients
  firing together) the first request of a burst no longer waits for company, batches are about
  half as large and the service's CPU per request is 6-9 % higher (median +1-3 ms); the
  eighth fix, below, gathers them again.
* **A batch takes in what the event loop is about to queue.** The batcher dispatches a batch
  with the requests queued at that instant, but the batch only starts on a later loop
  iteration, and the same worker is meanwhile parsing the requests that arrived with the
  previous batch's answers: under load the batch leaves most of them behind, to start the next
  one. At saturation (wrk, 32 connections) batches held ~10 of the 32 requests in flight, each
  paying the batch's fixed cost (the model call, cache misses). Before its callback runs, a
  dispatched batch now yields to the event loop until three iterations in a row add nothing to
  the queue (or the batch is full, or its first request has waited 10 ms, or a tenth of
  ``max_latency_ms``), then takes the queued requests in. Under load that settles on full
  batches (32 of 32 here), for the cost of three loop iterations on a lone request (below).
  Measured (interleaved A/B against the seven other fixes, ``python -m tests.bench.ab``, 2
  cores): peak (wrk -c32) 3,274 -> 3,688 req/s in 8 of 8 paired rounds, worker CPU 304 -> 269
  µs a request, batches of 11-12 -> 31.9; under hey's synchronised bursts CPU 400 -> 349 µs a
  request, p99 26.6 -> 23.5 ms; 100-transaction requests (wrk -c8) 266 -> 334 req/s, CPU
  3,745 -> 2,979 µs a request. The no-op service: 4,726 -> 4,804 req/s (its batches cost
  nothing). The cost: a lone request ~20-50 µs later (one client: 1,467 -> 1,422 req/s; a lone
  request through the batcher alone, in process: 12.0 -> 17.4 µs, median of 3,000 sequential
  calls to a trained ``CorkDispatcher`` with an echo callback under uvloop).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Collection
from typing import Any

log = logging.getLogger("bentoml.fraud_service")

SUPPORTED = ("1.4.",)  # the versions whose internals these patches were written against
NAMES = (  # every fix, by the name apply() reports (FRAUD_BENTOML_PATCHES_SKIP takes these)
    "timeout_timer",
    "local_call",
    "response_headers",
    "root_json",
    "model_fields",
    "idle_dispatch",
    "gather_batch",
    "metrics_pid",
)
_applied: set[str] = set()
originals: dict[str, Any] = {}  # what each patch replaced


def check_names(names: Collection[str]) -> None:
    """Raise ``ValueError`` naming any of ``names`` that is not a fix of this module."""
    unknown = set(names) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown BentoML fixes {sorted(unknown)}; known: {', '.join(NAMES)}")


def _supported(version: str) -> bool:
    return version.startswith(SUPPORTED)


async def timeout_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    """Drop-in for ``TimeoutMiddleware.__call__`` (BentoML 1.4) that cancels its timer."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )
            await resp(scope, receive, send)
    else:
        timer.cancel()
        await fut  # wait for the future to finish
    finally:
        timer.cancel()
    return None


def _cached_local_call(original: Any) -> Any:
    def _local_call(self: Any, instance: Any) -> Any:
        cache = instance.__dict__.setdefault("_fraud_local_calls", {})
        caller = cache.get(self.name)
        if caller is None:
            caller = cache[self.name] = original(self, instance)
        return caller

    _local_call.__wrapped__ = original  # type: ignore[attr-defined]
    return _local_call


def _resolved_headers(original: Any) -> Any:
    """``ServiceAppFactory._add_response_headers`` with its injected logging format resolved
    once (the undecorated function is simple_di's ``__wrapped__``)."""
    raw = original.__wrapped__
    formatting: dict[str, str] = {}

    def _add_response_headers(self: Any, resp: Any) -> None:
        if not formatting:
            from bentoml._internal.configuration.containers import BentoMLContainer

            formatting.update(BentoMLContainer.logging_formatting.get())
        raw(self, resp, formatting)

    _add_response_headers.__wrapped__ = original  # type: ignore[attr-defined]
    return _add_response_headers


_ROOT_PREFIX = b'{"root":'


def _root_json(original: Any) -> Any:
    """``IORootModel.model_dump_json`` in one pydantic-core call: the model serialised as
    ``{"root": ...}``, the value cut out (other arguments: the original)."""

    def model_dump_json(self: Any, **kwargs: Any) -> str:
        if any(kwargs.values()):  # e.g. multipart fields to exclude: not our shape
            return str(original(self, **kwargs))
        raw = self.__pydantic_serializer__.to_json(self)
        if not (raw.startswith(_ROOT_PREFIX) and raw.endswith(b"}")):
            return str(original(self, **kwargs))
        return raw[len(_ROOT_PREFIX) : -1].decode()

    model_dump_json.__wrapped__ = original  # type: ignore[attr-defined]
    return model_dump_json


class ClassModelFields:
    """``model_fields`` for BentoML's IO descriptors: the class's fields, also when read on an
    instance (BentoML does that per request), without pydantic's deprecation warning."""

    def __get__(self, instance: Any, owner: type) -> Any:
        return getattr(owner, "__pydantic_fields__", {})


class NoIdleWait:
    """``Optimizer.wait`` of BentoML's ``CorkDispatcher``: always 0 (the learned value is
    dropped), so the dispatcher never holds requests while no batch is in flight."""

    def __get__(self, instance: Any, owner: type) -> float:
        return 0.0

    def __set__(self, instance: Any, value: float) -> None:
        pass


QUIET_ITERATIONS = 3  # event-loop iterations adding no request before a batch starts
GATHER_LIMIT_S = 0.01  # longest a batch's first request waits for the batch to fill


async def gather(dispatcher: Any, jobs: tuple[Any, ...]) -> tuple[Any, ...]:
    """``jobs`` (a batch ``CorkDispatcher`` has dispatched) plus the requests queued while the
    event loop, yielded to, keeps adding some: until :data:`QUIET_ITERATIONS` iterations in a
    row add none, the queue can fill the batch, or the first job has waited
    :data:`GATHER_LIMIT_S` (at most a tenth of the dispatcher's latency limit)."""
    queue = dispatcher._queue
    size = dispatcher.max_batch_size
    try:
        taken = sum(dispatcher.get_batch_size(job.data) for job in jobs)
    except Exception:  # the stock batcher falls back to one per job too
        taken = len(jobs)
    deadline = jobs[0].enqueue_time + min(GATHER_LIMIT_S, dispatcher.max_latency / 10)
    quiet, seen = 0, len(queue)
    while quiet < QUIET_ITERATIONS and taken + len(queue) < size and time.time() < deadline:
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(queue) <= seen else 0
        seen = len(queue)
    if not queue or taken >= size:
        return jobs
    return jobs + tuple(dispatcher._get_inputs(size - taken))


def _gathering(outbound_call: Any) -> Any:
    """``CorkDispatcher.outbound_call`` running :func:`gather` first (its training calls, the
    first few batches after start, as shipped)."""

    @functools.wraps(outbound_call)
    async def gathered(self: Any, inputs_info: tuple[Any, ...], training: bool = False) -> Any:
        if not training and inputs_info:
            inputs_info = await gather(self, inputs_info)
        return await outbound_call(self, inputs_info, training)

    gathered.gathers = True  # type: ignore[attr-defined]
    return gathered


def cache_metrics_pid(value_class: Any = None) -> bool:
    """Let prometheus_client's multiprocess values (``value_class``, default the one in use)
    read a cached pid, refreshed after a fork, instead of calling ``os.getpid()`` on every
    write. False when multiprocess mode is off or prometheus_client's internals are not the
    expected ones."""
    from prometheus_client import values

    check = getattr(value_class or values.ValueClass, "_MmapedValue__check_for_pid_change", None)
    names = getattr(getattr(check, "__code__", None), "co_freevars", ())
    if check is None or "process_identifier" not in names:
        return False
    cell = check.__closure__[names.index("process_identifier")]
    identify = cell.cell_contents
    pid = [identify()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, identify()))
    cell.cell_contents = lambda: pid[0]
    return True


def apply(skip: Collection[str] = ()) -> list[str]:
    """Apply the patches this BentoML version supports, but those named in ``skip``; returns
    the names applied (all so far in this process).

    Idempotent. On another BentoML version nothing is patched and a warning says so."""
    import bentoml
    from _bentoml_impl.server.app import ServiceAppFactory
    from _bentoml_sdk.io_models import IOMixin, IORootModel
    from _bentoml_sdk.method import APIMethod
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    check_names(skip)
    version = bentoml.__version__
    if not _supported(version):
        log.warning("BentoML %s: request-path patches not applied (written for 1.4)", version)
        return []
    leave = _applied | set(skip)  # applied already, or not wanted
    if "timeout_timer" not in leave:
        originals["timeout_timer"] = TimeoutMiddleware.__call__
        TimeoutMiddleware.__call__ = timeout_call  # type: ignore[method-assign]
        _applied.add("timeout_timer")
    if "local_call" not in leave:
        originals["local_call"] = APIMethod._local_call
        APIMethod._local_call = _cached_local_call(APIMethod._local_call)
        _applied.add("local_call")
    headers = ServiceAppFactory._add_response_headers
    if "response_headers" not in leave and hasattr(headers, "__wrapped__"):
        originals["response_headers"] = headers
        ServiceAppFactory._add_response_headers = _resolved_headers(headers)
        _applied.add("response_headers")
    if "root_json" not in leave:
        originals["root_json"] = IORootModel.model_dump_json
        IORootModel.model_dump_json = _root_json(IORootModel.model_dump_json)
        _applied.add("root_json")
    if "model_fields" not in leave and "model_fields" not in vars(IOMixin):
        originals["model_fields"] = None  # IOMixin had none: pydantic's BaseModel answered
        IOMixin.model_fields = ClassModelFields()
        _applied.add("model_fields")
    if "idle_dispatch" not in leave and "wait" not in vars(Optimizer):
        originals["idle_dispatch"] = None  # an instance attribute, set and learned per batcher
        Optimizer.wait = NoIdleWait()  # type: ignore[assignment]
        _applied.add("idle_dispatch")
    outbound = CorkDispatcher.outbound_call
    if "gather_batch" not in leave and not getattr(outbound, "gathers", False):
        originals["gather_batch"] = outbound
        CorkDispatcher.outbound_call = _gathering(outbound)  # type: ignore[method-assign]
        _applied.add("gather_batch")
    if "metrics_pid" not in leave and cache_metrics_pid():
        _applied.add("metrics_pid")
    return sorted(_applied)
