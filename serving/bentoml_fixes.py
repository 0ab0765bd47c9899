"""Fixes to BentoML 1.4.40's request path, applied in each serving worker at start-up.

Each fix names the code it replaces or relies on, with a hash of that code's shape taken on
the tested BentoML version: on any other version nothing is patched, and a fix whose target
changed shape is skipped with one warning. :func:`apply` returns what was really applied (the
service's ``/health`` lists it); :func:`revert` restores BentoML as shipped. Why each fix
exists and what it gained, measured: ``docs/performance.md``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import CodeType
from typing import Any

log = logging.getLogger("bentoml.fraud_service")

TESTED_BENTOML = "1.4.40"  # the version in uv.lock and bentofile.yaml (a test keeps them equal)
ABSENT = "absent"  # the shape of an attribute the fix expects not to exist


# timeout_timer — what: TimeoutMiddleware cancels its per-request timer once answered.
# why: ~75,000 live timers at 2,500 req/s (30 s timeout) made every full GC walk them.
# gain: gen-2 GC passes stayed at ~5 ms instead of growing to 18 ms within 30 s of load.
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


# local_call — what: APIMethod.__get__'s local caller is built once per (method, instance).
# why: it ran inspect.signature two or three times a request.
# gain: ~4 % of the worker's CPU at peak.
def _cached_local_call(original: Any) -> Any:
    def _local_call(self: Any, instance: Any) -> Any:
        cache = instance.__dict__.setdefault("_fraud_local_calls", {})
        caller = cache.get(self.name)
        if caller is None:
            caller = cache[self.name] = original(self, instance)
        return caller

    _local_call.__wrapped__ = original  # type: ignore[attr-defined]
    return _local_call


# response_headers — what: _add_response_headers resolves its logging format once.
# why: simple_di's @inject bound an inspect.Signature on every response.
# gain: with root_json and metrics_pid, CPU a request 247 -> 215 µs (A/B, 3-5 rounds).
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


# root_json — what: IORootModel.model_dump_json in one pydantic-core call.
# why: it built Python objects with model_dump(mode="json"), then encoded them with json.dumps.
# gain: with response_headers and metrics_pid, CPU a request 247 -> 215 µs (A/B).
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


# model_fields — what: IO descriptors answer model_fields from their class.
# why: pydantic >= 2.11 warns on each instance access, which api_endpoint makes per request.
# gain: ~1.4 % of the worker's CPU (2.8 -> 0.28 µs an access).
class ClassModelFields:
    """``model_fields`` for BentoML's IO descriptors: the class's fields, also when read on an
    instance (BentoML does that per request), without pydantic's deprecation warning."""

    def __get__(self, instance: Any, owner: type) -> Any:
        return getattr(owner, "__pydantic_fields__", {})


# idle_dispatch — what: the adaptive batcher dispatches at once when no batch is in flight.
# why: its learned wait (queueing under past load) held every lone request, ~2-10 ms.
# gain: one client after load, median 9.5 -> 1.1 ms; peak unchanged.
class NoIdleWait:
    """``Optimizer.wait`` of BentoML's ``CorkDispatcher``: always 0 (the learned value is
    dropped), so the dispatcher never holds requests while no batch is in flight."""

    def __get__(self, instance: Any, owner: type) -> float:
        return 0.0

    def __set__(self, instance: Any, value: float) -> None:
        pass


# gather_batch — what: a dispatched batch takes in the requests the event loop is about to queue.
# why: under load a batch left most requests in flight behind (batches of ~11 of 32).
# gain: peak +13 %, CPU per request -12 %, batches 32 of 32; a lone request ~20-50 µs later.
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


# metrics_pid — what: prometheus_client's multiprocess values read a cached pid (fork-safe).
# why: every metric write called os.getpid(): 6-8 syscalls a request.
# gain: ~7 % of a no-op worker's CPU (py-spy --native); see response_headers for the A/B.
def cache_metrics_pid(value_class: Any = None) -> Callable[[], None] | None:
    """Let prometheus_client's multiprocess values (``value_class``, default the one in use)
    read a cached pid, refreshed after a fork, instead of calling ``os.getpid()`` on every
    write; returns the undo. None when multiprocess mode is off or prometheus_client's
    internals are not the expected ones."""
    from prometheus_client import values

    check = getattr(value_class or values.ValueClass, "_MmapedValue__check_for_pid_change", None)
    names = getattr(getattr(check, "__code__", None), "co_freevars", ())
    if check is None or "process_identifier" not in names:
        return None
    cell = check.__closure__[names.index("process_identifier")]
    identify = cell.cell_contents
    pid = [identify()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, identify()))
    cell.cell_contents = lambda: pid[0]

    def undo() -> None:
        cell.cell_contents = identify

    return undo


Undo = Callable[[], None]


@dataclass(frozen=True)
class Fix:
    """One fix: the code it was written against (``module:Class.attr`` -> shape) and how to
    install it (returns the undo)."""

    name: str
    shapes: dict[str, str]
    install: Callable[[], Undo | None]


def _resolve(target: str) -> tuple[Any, str]:
    """(owner, attribute) of ``module:Class.attr``; ImportError/AttributeError when gone."""
    module, _, path = target.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attr


def _code_digest(code: CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _code_digest(const, h)


def shape_of(target: str) -> str:
    """A short hash of the code at ``target`` (bytecode, names; nested functions included),
    ``absent`` when the class does not define it, ``missing`` when the module or class is gone,
    ``opaque`` for a value that is not code."""
    try:
        owner, attr = _resolve(target)
    except (ImportError, AttributeError):
        return "missing"
    if attr not in vars(owner):
        return ABSENT
    value = inspect.unwrap(vars(owner)[attr])
    code = getattr(value, "__code__", None)
    if code is None:
        return "opaque"
    h = hashlib.sha256()
    _code_digest(code, h)
    return h.hexdigest()[:16]


_originals: dict[str, Any] = {}  # target -> what a fix replaced there, while applied


def _swap(target: str, make: Callable[[Any], Any]) -> Undo:
    """Replace ``target`` with ``make(original)``; the undo puts the original back."""
    owner, attr = _resolve(target)
    original = _originals[target] = vars(owner)[attr]
    setattr(owner, attr, make(original))

    def undo() -> None:
        setattr(owner, attr, _originals.pop(target))

    return undo


def _add(target: str, value: Any) -> Undo:
    """Define ``target`` (absent on the class); the undo deletes it again."""
    owner, attr = _resolve(target)
    setattr(owner, attr, value)
    return lambda: delattr(owner, attr)


def _install_resolved_headers() -> Undo | None:
    """The response_headers fix, where simple_di's ``@inject`` wraps the method."""
    owner, attr = _resolve(f"{APP}._add_response_headers")
    if not hasattr(vars(owner)[attr], "__wrapped__"):
        return None
    return _swap(f"{APP}._add_response_headers", _resolved_headers)


APP = "_bentoml_impl.server.app:ServiceAppFactory"
TRAFFIC = "bentoml._internal.server.http.traffic:TimeoutMiddleware"
METHOD = "_bentoml_sdk.method:APIMethod"
IO = "_bentoml_sdk.io_models"
DISPATCH = "bentoml._internal.marshal.dispatcher"
PROM_VALUES = "prometheus_client.values"

FIXES: tuple[Fix, ...] = (
    Fix(
        "timeout_timer",
        {
            f"{TRAFFIC}.__call__": "94a51f966b86d54f",
            f"{TRAFFIC}._set_timer_out": "c95911aaf75d3fdb",
        },
        lambda: _swap(f"{TRAFFIC}.__call__", lambda _: timeout_call),
    ),
    Fix(
        "local_call",
        {f"{METHOD}._local_call": "7ce8b962797ebc9d", f"{METHOD}.__get__": "ba93487170b54eda"},
        lambda: _swap(f"{METHOD}._local_call", _cached_local_call),
    ),
    Fix(
        "response_headers",
        {f"{APP}._add_response_headers": "163ea4062b038c38"},
        _install_resolved_headers,
    ),
    Fix(
        "root_json",
        {f"{IO}:IORootModel.model_dump_json": "3d39a9908487ded1"},
        lambda: _swap(f"{IO}:IORootModel.model_dump_json", _root_json),
    ),
    Fix(
        "model_fields",
        {f"{IO}:IOMixin.model_fields": ABSENT, f"{APP}.api_endpoint": "16a84e4b2d85fbef"},
        lambda: _add(f"{IO}:IOMixin.model_fields", ClassModelFields()),
    ),
    Fix(
        "idle_dispatch",
        {
            f"{DISPATCH}:Optimizer.wait": ABSENT,
            f"{DISPATCH}:Optimizer.__init__": "856cc64727ab6695",
            f"{DISPATCH}:CorkDispatcher.controller": "93d9abca3491e36f",
        },
        lambda: _add(f"{DISPATCH}:Optimizer.wait", NoIdleWait()),
    ),
    Fix(
        "gather_batch",
        {
            f"{DISPATCH}:CorkDispatcher.outbound_call": "59e1a86353adc066",
            f"{DISPATCH}:CorkDispatcher._get_inputs": "b20886380dc20f69",
        },
        lambda: _swap(f"{DISPATCH}:CorkDispatcher.outbound_call", _gathering),
    ),
    Fix(
        "metrics_pid",
        {f"{PROM_VALUES}:MultiProcessValue": "53630c38400c052f"},
        cache_metrics_pid,
    ),
)
NAMES = tuple(fix.name for fix in FIXES)  # what FRAUD_BENTOML_FIXES_SKIP takes

_undo: dict[str, Undo] = {}  # applied fixes, in order, with their undo


def check_names(names: Collection[str]) -> None:
    """Raise ``ValueError`` naming any of ``names`` that is not a fix of this module."""
    unknown = set(names) - set(NAMES)
    if unknown:
        raise ValueError(
            f"FRAUD_BENTOML_FIXES_SKIP: unknown BentoML fixes {sorted(unknown)}; "
            f"known: {', '.join(NAMES)}"
        )


def changed_targets(fix: Fix) -> list[str]:
    """The targets of ``fix`` whose shape is not the one it was written against."""
    return [t for t, want in fix.shapes.items() if shape_of(t) != want]


def original(name: str) -> Any:
    """What the applied fix ``name`` replaced, as shipped (KeyError when it is not applied)."""
    fix = next(f for f in FIXES if f.name == name)
    return _originals[next(iter(fix.shapes))]


def applied() -> list[str]:
    """The fixes in force in this process, in the order applied."""
    return list(_undo)


def apply(skip: Collection[str] = ()) -> list[str]:
    """Apply every fix but those in ``skip`` (names checked first); returns the fixes in force.

    Idempotent. On a BentoML other than :data:`TESTED_BENTOML` (read from the public package,
    before any private import) nothing is patched; a fix whose targets changed shape is
    skipped; each case logs one warning naming it."""
    import bentoml

    check_names(skip)
    if bentoml.__version__ != TESTED_BENTOML:
        log.warning(
            "BentoML %s: request-path fixes not applied (written against %s)",
            bentoml.__version__,
            TESTED_BENTOML,
        )
        return applied()
    for fix in FIXES:
        if fix.name in _undo or fix.name in skip:
            continue
        changed = changed_targets(fix)
        if changed:
            log.warning("BentoML fix %s skipped: its target changed shape: %s", fix.name, changed)
            continue
        undo = fix.install()
        if undo is None:  # e.g. metrics_pid outside prometheus_client's multiprocess mode
            log.info("BentoML fix %s not needed here", fix.name)
            continue
        _undo[fix.name] = undo
    return applied()


def revert() -> list[str]:
    """Restore every patched target as shipped (newest first); returns the fixes reverted."""
    done = list(reversed(_undo))
    for name in done:
        _undo.pop(name)()
    return done
