"""The request-path fixes to BentoML 1.4 (training/bentoml_patches.py), against the real classes."""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from training import bentoml_patches


@pytest.fixture(scope="module", autouse=True)
def patched() -> None:
    assert set(bentoml_patches.apply()) == {"local_call", "timeout_timer"}


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
    stock = bentoml_patches.originals["timeout_timer"]
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


def test_other_bentoml_versions_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bentoml, "__version__", "1.5.0")
    assert bentoml_patches.apply() == []
