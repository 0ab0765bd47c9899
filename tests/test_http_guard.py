"""serving.http_guard.Limits in process, against a slow ASGI app: the in-flight cap answers
503 with Retry-After (never a wait), the body cap 413, and every 503 carries Retry-After."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serving.http_guard import Limits


def scope(path: str = "/predict", method: str = "POST", length: int | None = 2) -> dict:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "path": path, "method": method, "headers": headers}


async def call(app: Any, sc: dict, chunks: tuple[bytes, ...] = (b"{}",)) -> dict[str, Any]:
    """One request through ``app``: status, headers, JSON body."""
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(sc, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {
        "status": start["status"],
        "headers": dict(start["headers"]),
        "json": json.loads(body) if body else None,
    }


def slow_app(status: int = 200, delay: float = 0.05) -> Any:
    seen: list[bytes] = []

    async def app(sc: dict, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message.get("body", b""))
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    app.seen = seen  # type: ignore[attr-defined]
    return app


def test_beyond_the_in_flight_cap_requests_get_503_with_retry_after_at_once() -> None:
    guard = Limits(slow_app(delay=0.2), max_body=1024, max_in_flight=3)

    async def burst() -> list[dict[str, Any]]:
        return await asyncio.gather(*(call(guard, scope()) for _ in range(10)))

    loop = asyncio.new_event_loop()
    try:
        t0 = loop.time()
        answers = loop.run_until_complete(burst())
        elapsed = loop.time() - t0
        after = loop.run_until_complete(call(guard, scope()))  # the cap frees up again
    finally:
        loop.close()
    statuses = sorted(a["status"] for a in answers)
    assert statuses == [200] * 3 + [503] * 7
    rejected = [a for a in answers if a["status"] == 503]
    assert all(a["headers"][b"retry-after"] == b"1" for a in rejected)
    assert rejected[0]["json"]["detail"][0]["type"] == "overloaded"
    assert elapsed < 0.4  # the rejected ones did not wait for the slow ones
    assert after["status"] == 200 and guard.in_flight == 0


def test_a_503_from_inside_the_service_gets_retry_after() -> None:
    guard = Limits(slow_app(status=503, delay=0), max_body=1024, max_in_flight=3)
    answer = asyncio.run(call(guard, scope()))
    assert answer["status"] == 503 and answer["headers"][b"retry-after"] == b"1"


def test_body_cap_by_content_length_and_by_counting_a_chunked_body() -> None:
    app = slow_app(delay=0)
    guard = Limits(app, max_body=10, max_in_flight=3)
    by_length = asyncio.run(call(guard, scope(length=11), (b"x" * 11,)))
    chunked = asyncio.run(call(guard, scope(length=None), (b"x" * 6, b"y" * 6)))
    fits = asyncio.run(call(guard, scope(length=None), (b"{", b"}")))
    assert by_length["status"] == chunked["status"] == 413
    assert chunked["json"]["detail"][0] == {"loc": ["body"], "type": "too_large", "max_bytes": 10}
    assert fits["status"] == 200 and app.seen == [b"{}"]  # replayed whole to the app


def test_probes_and_metrics_pass_even_when_the_cap_is_reached() -> None:
    guard = Limits(slow_app(delay=0), max_body=10, max_in_flight=1)
    guard.in_flight = 1
    for path in ("/readyz", "/livez", "/metrics", "/health"):
        assert asyncio.run(call(guard, scope(path, "GET", None)))["status"] == 200
    assert asyncio.run(call(guard, scope()))["status"] == 503
