"""Differential profile of running servers: where one spends more per request than another.

For each server in turn: wrk loads it (pinned to CPU 1, as ``make bench`` does) and py-spy
samples its serving worker for ``--seconds`` in the middle of the run. Each frame's samples on
the worker's main thread become µs per request (samples / rate / requests served in the
window); frames are listed by how much more the first server spends in them than the second.
Both servers slow down while sampled, so compare them, not their absolute figures with a
``make bench`` table. Needs py-spy (``pip install py-spy``) and the right to ptrace (root)::

    python -m tests.bench.profile_diff --bodies reports/bench-work/single.jsonl 18081 18082

``--self`` ranks by time in the frame itself instead of everything below it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.bench.ab import serving_worker
from tests.bench.run_bench import CLIENT_CPU, wrk

WARM_UP_S = 3  # wrk runs this long before sampling starts, and as long after it ends


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:line)`` -> ``function@file.py``."""
    func, _, where = frame.partition(" (")
    return f"{func}@{where.rsplit('/', 1)[-1].split(':')[0]}" if where else func


def per_request(raw: Path, rate: int, requests: float) -> tuple[dict[str, float], dict[str, float]]:
    """µs per request by frame, (inclusive, self), from py-spy's raw (collapsed) output; only
    the main thread (worker threads' stacks start in ``threading``'s bootstrap)."""
    inclusive: collections.Counter[str] = collections.Counter()
    itself: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "_bootstrap" in stack:
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += int(count)
        itself[frames[-1]] += int(count)
    scale = 1e6 / rate / max(requests, 1.0)
    return (
        {k: v * scale for k, v in inclusive.items()},
        {k: v * scale for k, v in itself.items()},
    )


def py_spy() -> str:
    """py-spy on the PATH or beside this interpreter (installed into the venv, not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def sample(port: int, bodies: Path, connections: int, seconds: int, rate: int, out: Path) -> float:
    """Load ``port`` and sample its worker; returns the requests served while sampled."""
    worker = serving_worker(port)
    cmd = [
        "taskset", "-c", CLIENT_CPU, py_spy(), "record", "-p", str(worker.pid),
        "-r", str(rate), "-d", str(seconds), "-f", "raw", "-o", str(out),
    ]  # fmt: skip
    spy: list[subprocess.Popen] = []
    timer = threading.Timer(
        WARM_UP_S, lambda: spy.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    )
    timer.start()
    stats = wrk(f"http://127.0.0.1:{port}/predict", bodies, connections, seconds + 2 * WARM_UP_S)
    timer.join()
    if spy[0].wait(timeout=60) != 0 or not out.exists():
        raise SystemExit(f"py-spy could not sample pid {worker.pid} (port {port}): run as root")
    return stats["rps"] * seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ports", nargs=2, type=int, help="the server to explain, then the baseline")
    ap.add_argument("--bodies", type=Path, required=True, help="request bodies, one per line")
    ap.add_argument("--seconds", type=int, default=18)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--self", dest="own", action="store_true", help="rank by self time")
    args = ap.parse_args()
    py_spy()
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for port in args.ports:
            raw = Path(tmp) / f"{port}.raw"
            served = sample(port, args.bodies, args.connections, args.seconds, args.rate, raw)
            inclusive, itself = per_request(raw, args.rate, served)
            profiles.append(itself if args.own else inclusive)
            print(
                f"{port}: {served / args.seconds:,.0f} req/s while sampled, main thread "
                f"{sum(itself.values()):,.0f} µs per request"
            )
    a, b = profiles
    print(f"µs per request ({'self' if args.own else 'inclusive'}): {args.ports[0]}, then "
          f"{args.ports[1]}, difference; by difference")  # fmt: skip
    for name in sorted(a.keys() | b.keys(), key=lambda k: b.get(k, 0) - a.get(k, 0))[: args.top]:
        x, y = a.get(name, 0.0), b.get(name, 0.0)
        print(f"{x:9.1f} {y:9.1f} {x - y:+9.1f}  {name}")


if __name__ == "__main__":
    main()
