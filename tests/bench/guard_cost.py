"""What the guards add to a request, in process: an echo ASGI app called bare, behind
``serving.http_guard.Limits``, behind ``serving.auth.ApiKeyAuth`` with a key without limits and
with a key with both rate limits (far from reached), on a /predict POST with wrk-like headers;
median of interleaved rounds.

    python -m tests.bench.guard_cost [--calls 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from serving.auth import ApiKeyAuth
from serving.http_guard import Limits
from training.core import api_keys

SCOPE = {
    "type": "http",
    "path": "/predict",
    "method": "POST",
    "headers": [
        (b"host", b"127.0.0.1:8080"),
        (b"content-type", b"application/json"),
        (b"content-length", b"250"),
        (b"accept", b"*/*"),
        (b"user-agent", b"wrk"),
    ],
}


async def echo(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    pass


async def per_call_us(app: Any, scope: dict[str, Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - t0) / calls * 1e6


def with_key(key: str) -> dict[str, Any]:
    return {**SCOPE, "headers": [*SCOPE["headers"], (b"authorization", f"Bearer {key}".encode())]}


async def main(calls: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    path = folder / "api-keys.json"
    plain, _ = api_keys.create(path, "plain", ["score"])
    limited, _ = api_keys.create(path, "limited", ["score"], 1e7, 1e9)
    apps: dict[str, tuple[Any, dict[str, Any]]] = {
        "echo": (echo, SCOPE),
        "Limits": (Limits(echo, max_body=1 << 20, max_in_flight=512), SCOPE),
        "ApiKeyAuth, key without limits": (ApiKeyAuth(echo, path), with_key(plain)),
        "ApiKeyAuth, key with both limits": (ApiKeyAuth(echo, path), with_key(limited)),
    }
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):  # interleaved
        for name, (app, scope) in apps.items():
            times[name].append(await per_call_us(app, scope, calls))
    bare = statistics.median(times["echo"])
    print(f"echo app {bare:.2f} µs (median of {rounds} x {calls:,} calls); added a request:")
    for name in list(apps)[1:]:
        print(f"  {name}: +{statistics.median(times[name]) - bare:.2f} µs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.calls, args.rounds))
