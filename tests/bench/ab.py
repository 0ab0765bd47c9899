"""Interleaved A/B of running servers: req/s and the serving worker's CPU per request.

Separate benchmark runs drift by ±20 % on a shared machine; interleaving short wrk runs
(A, B, A, B, ...) lets drift hit both alike, and CPU time per request (from the worker's own
counters) is steadier than throughput. Start the servers first (pinned to CPU 0, e.g.
``taskset -c 0 bentoml serve service:FraudDetector --port 18081``), then::

    python -m tests.bench.ab --bodies reports/bench-work/single.jsonl 18081 18082

``--think-ms 100 --connections 50`` offers ~500 req/s in unsynchronised arrivals instead.
``--hey`` offers ``make bench``'s 500 req/s instead (hey, 50 clients x 10 q/s: bursts of 50
every 100 ms, the first body of the file) and adds the p50 to the report.
``make bench`` writes the bodies (single.jsonl, hundred.jsonl) to reports/bench-work/.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil

from tests.bench.run_bench import cpu_seconds, hey_rate, wrk


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
    ap.add_argument("--hey", action="store_true", help="500 req/s offered in bursts (hey)")
    ap.add_argument(
        "--think-ms",
        type=float,
        default=None,
        help="each wrk connection pauses ~this long (exponential) before each request",
    )
    args = ap.parse_args()
    workers = {port: serving_worker(port) for port in args.ports}
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.json"  # hey sends one body
        one.write_text(args.bodies.read_text().splitlines()[0])
        runs = interleave(workers, args, one)
    report(runs, args.hey or bool(args.think_ms))


def interleave(
    workers: dict[int, psutil.Process], args: argparse.Namespace, one: Path
) -> dict[int, list[dict[str, Any]]]:
    """``args.rounds`` runs per server, A, B, A, B...: each with the worker's CPU per request."""

    def load(port: int, seconds: int) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}/predict"
        if args.hey:
            stats = hey_rate(url, one, seconds)
            return {**stats, "requests": stats["ok"] + stats["failed"], "non_2xx": stats["failed"]}
        return wrk(url, args.bodies, args.connections, seconds, args.think_ms)

    runs: dict[int, list[dict[str, Any]]] = {port: [] for port in args.ports}
    for port in args.ports:  # warm-up
        load(port, 3)
    for _ in range(args.rounds):
        for port, proc in workers.items():
            cpu0 = cpu_seconds(proc.pid)
            stats = load(port, args.seconds)
            stats["cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / max(stats["requests"], 1) * 1e6
            runs[port].append(stats)
    return runs


def report(runs: dict[int, list[dict[str, Any]]], with_p50: bool) -> None:
    for port, rs in runs.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        print(
            f"{port}: req/s {[round(r['rps']) for r in rs]} median {med('rps'):.0f}"
            f" | worker CPU µs/request {[round(r['cpu_us']) for r in rs]}"
            f" median {med('cpu_us'):.0f}"
            + (f" | p50 ms median {med('p50_ms'):.1f}" if with_p50 else "")
            + f" | p99 ms {[round(r['p99_ms'], 1) for r in rs]} median {med('p99_ms'):.1f}"
            f" | non-2xx {sum(r['non_2xx'] for r in rs)}"
        )


if __name__ == "__main__":
    main()
