"""Two small, version-guarded patches to BentoML 1.4's request path (see README "Performance").

Both were found with py-spy on the serving worker and are written to be sent upstream:

* **Request timers cancelled.** ``TimeoutMiddleware`` arms a ``call_later(traffic.timeout)``
  timer for every request and never cancels it: at 2,500 req/s with the 30 s timeout that is
  ~75,000 live timer handles, futures and contexts, which every full garbage collection walks
  (gen-2 passes grew from 5 to 18 ms within 30 s of traffic). The patched middleware behaves
  the same (504 after the timeout) and cancels the timer once the request is answered.
* **One local caller per API method.** ``APIMethod.__get__`` rebuilds a wrapper with
  ``inspect.signature`` on every attribute access: two or three times per request (~4 % of the
  worker's CPU at peak). The wrapper depends only on (method, instance), so it is cached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("bentoml.fraud_service")

SUPPORTED = ("1.4.",)  # the versions whose internals these patches were written against
_applied: set[str] = set()
originals: dict[str, Any] = {}  # what each patch replaced


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


def apply() -> list[str]:
    """Apply the patches this BentoML version supports; returns the names applied.

    Idempotent. On another BentoML version nothing is patched and a warning says so."""
    import bentoml
    from _bentoml_sdk.method import APIMethod
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    version = bentoml.__version__
    if not _supported(version):
        log.warning("BentoML %s: request-path patches not applied (written for 1.4)", version)
        return []
    if "timeout_timer" not in _applied:
        originals["timeout_timer"] = TimeoutMiddleware.__call__
        TimeoutMiddleware.__call__ = timeout_call  # type: ignore[method-assign]
        _applied.add("timeout_timer")
    if "local_call" not in _applied:
        originals["local_call"] = APIMethod._local_call
        APIMethod._local_call = _cached_local_call(APIMethod._local_call)
        _applied.add("local_call")
    return sorted(_applied)
