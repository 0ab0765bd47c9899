"""Interleaved A/B of running servers: req/s and the serving worker's CPU per request.

Separate benchmark runs drift by ±20 % on a shared machine; interleaving short wrk runs
(A, B, A, B, ...) lets drift hit both alike, and CPU time per request (from the worker's own
counters) is steadier than throughput. Start the servers first (pinned to CPU 0, e.g.
``taskset -c 0 bentoml serve service:FraudDetector --port 18081``), then::

    python -m tests.bench.ab --bodies reports/bench-work/single.jsonl 18081 18082

``make bench`` writes the bodies (single.jsonl, hundred.jsonl) to reports/bench-work/.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import psutil

from tests.bench.run_bench import cpu_seconds, wrk


def serving_worker(port: int) -> psutil.Process:
    """The process that does the serving on ``port``: of the processes holding its listening
    socket (BentoML's arbiter passes it to the worker), the one furthest down the tree."""
    owners = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    if not owners:
        raise SystemExit(f"nothing listens on port {port}")
    return max((psutil.Process(pid) for pid in owners), key=lambda p: len(p.parents()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ports", nargs="+", type=int, help="servers to compare (POST /predict)")
    ap.add_argument("--bodies", type=Path, required=True, help="request bodies, one per line")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    workers = {port: serving_worker(port) for port in args.ports}
    runs: dict[int, list[tuple[float, float, float, int]]] = {port: [] for port in args.ports}
    for port in args.ports:  # warm-up
        wrk(f"http://127.0.0.1:{port}/predict", args.bodies, args.connections, 3)
    for _ in range(args.rounds):
        for port, proc in workers.items():
            cpu0 = cpu_seconds(proc.pid)
            stats = wrk(
                f"http://127.0.0.1:{port}/predict", args.bodies, args.connections, args.seconds
            )
            cpu_us = (cpu_seconds(proc.pid) - cpu0) / max(stats["requests"], 1) * 1e6
            runs[port].append((stats["rps"], cpu_us, stats["p99_ms"], stats["non_2xx"]))
    for port, rs in runs.items():
        print(
            f"{port}: req/s {[round(r[0]) for r in rs]}"
            f" median {statistics.median(r[0] for r in rs):.0f}"
            f" | worker CPU µs/request {[round(r[1]) for r in rs]}"
            f" median {statistics.median(r[1] for r in rs):.0f}"
            f" | p99 ms median {statistics.median(r[2] for r in rs):.1f}"
            f" | non-2xx {sum(r[3] for r in rs)}"
        )


if __name__ == "__main__":
    main()
