"""What ``serving.http_guard.Limits`` adds to a request, in process: an echo ASGI app called
with and without it (a /predict POST with wrk-like headers), median of rounds.

    python -m tests.bench.guard_cost [--calls 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from serving.http_guard import Limits

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


async def per_call_us(app: Any, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        await app(SCOPE, receive, send)
    return (time.perf_counter() - t0) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    guarded = Limits(echo, max_body=1 << 20, max_in_flight=512)
    bare, with_limits = [], []
    for _ in range(rounds):  # interleaved
        bare.append(await per_call_us(echo, calls))
        with_limits.append(await per_call_us(guarded, calls))
    b, g = statistics.median(bare), statistics.median(with_limits)
    print(
        f"echo app {b:.2f} µs, with Limits {g:.2f} µs: +{g - b:.2f} µs a request "
        f"(median of {rounds} x {calls:,} calls)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.calls, args.rounds))
