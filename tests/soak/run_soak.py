"""`make soak`: the service for a long time at a steady 500 req/s, watched minute by minute.

`python -m serving.supervisor` (2 workers, the decision shipper beside them) with the feature
state in Redis and the decision log in PostgreSQL (a private cluster and redis-server of its
own), driven open-loop at ``--rate`` single-transaction requests a second (latency measured
from each request's scheduled time, so a stall is not hidden) with the demo's next days,
looped with shifted times and fresh ids. Every minute it records the RSS and open fds of every
process, p50/p99, errors, the journal backlog and Redis's memory. It passes when, after the
warm-up (5 minutes, or a third of a short run), no process's RSS grows by more than 10 %, p99
drifts by at most 20 % (median of the first three minutes after the warm-up against the last
three), no request fails, and every answered decision is in PostgreSQL. Writes
reports/soak/soak.json, soak.md and soak.png; exits 1 on a failed criterion::

    python -m tests.soak.run_soak [--minutes 30] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

PROJECT = Path(__file__).resolve().parents[2]
RSS_GROWTH, P99_DRIFT = 0.10, 0.20
# circusd: `python -m serving.supervisor` itself (BentoML's arbiter renames its process)
ROLES = (
    ("_bentoml_impl.worker.service", "worker"),
    ("serving.shipper", "shipper"),
    ("circusd", "circusd"),
)


def stream(minutes: int, rate: int) -> list[dict[str, Any]]:
    """Enough request bodies: the demo's next days, looped with times shifted past the last
    loop and ids made unique."""
    from datetime import timedelta

    from training.core import schema
    from training.demo.replay import next_days

    base = next_days(PROJECT / "data" / "demo", 14)
    # whole days: a loop starts the day after the last one ends (the stream clock refuses a
    # jump of a day or more)
    first, last = base["TX_DATETIME"].min(), base["TX_DATETIME"].max()
    span = last.normalize() - first.normalize() + timedelta(days=1)
    need, out, loop = minutes * 60 * rate + rate * 10, [], 0
    while len(out) < need:
        frame = base.assign(TX_DATETIME=base["TX_DATETIME"] + loop * span)
        out += schema.request_bodies(frame, id_prefix=f"soak{loop}-")
        loop += 1
    return out[:need]


def processes(root: psutil.Process) -> dict[str, psutil.Process]:
    """The service's processes by role (worker-1, worker-2, shipper, circusd)."""
    found: dict[str, psutil.Process] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for marker, role in ROLES:
            if marker in line or p.name() == marker:
                n = sum(1 for k in found if k.split("-")[0] == role) + 1
                found[f"{role}-{n}" if role == "worker" else role] = p
                break
    return found


async def drive(
    url: str, key: str, bodies: list[dict[str, Any]], rate: int, minutes: int, on_minute: Any
) -> tuple[list[str], dict[str, int], dict[str, list[str]]]:
    """Open loop: request i is sent at t0 + i / rate; each minute's latencies go to
    ``on_minute``. The answered transaction ids, the failures by kind, and the first few
    answers of each kind (so a failed run says why)."""
    import aiohttp

    answered: list[str] = []
    failed: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    headers = {"Authorization": f"Bearer {key}"}

    def fail(kind: str, detail: str) -> None:
        failed[kind] = failed.get(kind, 0) + 1
        if len(seen := samples.setdefault(kind, [])) < 5:
            seen.append(f"{time.monotonic() - t0:.1f} s: {detail[:400]}")

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(body: dict[str, Any], due: float) -> None:
            try:
                async with session.post(
                    f"{url}/predict",
                    json={"transactions": [body]},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    text = await r.read()
                    if r.status == 200:
                        answered.append(body["transaction_id"])
                    else:
                        fail(str(r.status), text.decode(errors="replace"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                fail(type(exc).__name__, repr(exc))
            latencies.append(time.monotonic() - due)

        t0, tasks, minute = time.monotonic(), set(), 1
        for i in range(minutes * 60 * rate):
            due = t0 + i / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(one(bodies[i], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if due - t0 >= minute * 60:
                done, latencies[:] = list(latencies), []
                on_minute(minute, done, dict(failed))
                minute += 1
        await asyncio.gather(*tasks)
        on_minute(minute, list(latencies), dict(failed))
    return answered, failed, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=int, default=int(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--out", type=Path, default=PROJECT / "reports" / "soak")
    args = ap.parse_args()
    # a SIGTERM (CI's timeout, a Ctrl-C'd make) still stops the service, Redis and PostgreSQL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("BENTOML_HOME", str(PROJECT / ".bentoml"))
    from tests import servers
    from tests.services import PrivatePostgres, PrivateRedis, free_port

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"soak: {args.minutes} min at {args.rate} req/s; building the stream", flush=True)
    bodies = stream(args.minutes, args.rate)
    pg, redis = PrivatePostgres(free_port()), PrivateRedis(free_port(), work / "redis.log")
    port = free_port()
    minutes: list[dict[str, Any]] = []
    proc = None
    try:
        pg.start()
        redis.start()
        env = {
            **os.environ,
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOML_HOME": str(servers.private_home(work / "home")),
            "FRAUD_API_KEYS_FILE": str(servers.write_key_file(work)),
            "FRAUD_WORKERS": "2",
            "FRAUD_STATE_BACKEND": "redis",
            "FRAUD_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "FRAUD_DECISION_DB_URL": pg.url,
            "FRAUD_JOURNAL_DIR": str(work / "journal"),
        }
        log = work / "serve.log"
        proc = subprocess.Popen(
            servers.serve_command(port),
            cwd=PROJECT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        servers.wait_http(f"{url}/readyz", proc, log, timeout=300)
        root = psutil.Process(proc.pid)
        import httpx
        import redis as redis_py

        r = redis_py.Redis(port=redis.port)

        def on_minute(minute: int, lat: list[float], failed: dict[str, int]) -> None:
            lat.sort()
            health = httpx.get(f"{url}/health", timeout=10).json()
            row: dict[str, Any] = {
                "minute": minute,
                "requests": len(lat),
                "p50_ms": lat[len(lat) // 2] * 1e3 if lat else None,
                "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3 if lat else None,
                "failed": sum(failed.values()),
                "backlog_bytes": health["decision_log"]["backlog_bytes"],
                "redis_mb": int(r.info("memory")["used_memory"]) / 2**20,
                "rss_mb": {},
                "fds": {},
            }
            for role, p in processes(root).items():
                try:
                    row["rss_mb"][role] = p.memory_info().rss / 2**20
                    row["fds"][role] = p.num_fds()
                except psutil.Error:
                    continue
            minutes.append(row)
            print(
                f"[soak] minute {minute}: p99 {row['p99_ms']:.1f} ms, failed {row['failed']}, "
                f"backlog {row['backlog_bytes']} B, redis {row['redis_mb']:.0f} MB, RSS "
                + ", ".join(f"{k} {v:.0f}" for k, v in row["rss_mb"].items()),
                flush=True,
            )

        answered, failed, samples = asyncio.run(
            drive(url, servers.KEY, bodies, args.rate, args.minutes, on_minute)
        )
        lost = missing(pg.url, answered)
    finally:
        if proc is not None:
            servers.stop(proc, grace=20)
        redis.close()
        pg.close()
    verdict = judge(minutes, args.minutes, failed, lost, len(answered))
    report = {
        "minutes": minutes,
        "rate": args.rate,
        "answered": len(answered),
        "failed": failed,
        "failure_samples": samples,
        "lost": lost,
        "verdict": verdict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    (args.out / "soak.md").write_text(render(report))
    plot(minutes, args.out / "soak.png")
    print(render(report))
    if not all(ok for ok, _ in verdict.values()):
        for kind, seen in samples.items():
            print(f"first {kind} answers:\n  " + "\n  ".join(seen))
        lines = (work / "serve.log").read_text(errors="replace").splitlines()
        print(f"last 80 lines of {work / 'serve.log'}:\n" + "\n".join(lines[-80:]))
        sys.exit(1)


def missing(url: str, answered: list[str]) -> int:
    """Answered decisions not in the store, once the shipper has caught up (60 s at most)."""
    import sqlalchemy as sa

    from training.core import decision_store as ds

    want, engine, left = set(answered), ds.engine_for(url), len(answered)
    deadline = time.monotonic() + 60
    try:
        while left and time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(ds.decisions.c.transaction_id).where(
                        ds.decisions.c.transaction_id.like("soak%")
                    )
                ).scalars()
                left = len(want - set(rows))
            time.sleep(2 if left else 0)
    finally:
        engine.dispose()
    return left


def judge(
    rows: list[dict[str, Any]], minutes: int, failed: dict[str, int], lost: int, answered: int
) -> dict[str, tuple[bool, str]]:
    """Each criterion: (passed, what was measured)."""
    warm = min(5, max(1, minutes // 3))
    full = [r for r in rows if r["minute"] <= minutes and r["requests"]]
    after = [r for r in full if r["minute"] >= warm]
    growth = {}
    for role in after[0]["rss_mb"] if after else []:
        first, last = after[0]["rss_mb"].get(role), after[-1]["rss_mb"].get(role)
        if first and last:
            growth[role] = last / first - 1
    early = statistics.median(r["p99_ms"] for r in after[1:4] or after[:1])
    late = statistics.median(r["p99_ms"] for r in after[-3:])
    drift = late / early - 1
    worst = max(growth.values(), default=0.0)
    return {
        "rss": (
            worst <= RSS_GROWTH,
            f"largest RSS growth after minute {warm}: {worst:+.1%} ("
            + ", ".join(f"{k} {v:+.1%}" for k, v in growth.items())
            + ")",
        ),
        "p99": (
            drift <= P99_DRIFT,
            f"p99 {early:.1f} ms after the warm-up, {late:.1f} ms at the end: {drift:+.1%}",
        ),
        "errors": (not failed, f"{sum(failed.values())} failed requests {failed or ''}"),
        "lost": (lost == 0, f"{lost} of {answered:,} answered decisions missing from PostgreSQL"),
    }


def render(report: dict[str, Any]) -> str:
    rows = report["minutes"]
    roles = sorted({k for r in rows for k in r["rss_mb"]})
    lines = [
        "| minute | req | p50 / p99 ms | failed | backlog B | Redis MB | "
        + " | ".join(f"{k} RSS MB / fds" for k in roles)
        + " |",
        "|" + "---:|" * (6 + len(roles)),
    ]
    for r in rows:
        lines.append(
            f"| {r['minute']} | {r['requests']} | {r['p50_ms'] or 0:.1f} / {r['p99_ms'] or 0:.1f} "
            f"| {r['failed']} | {r['backlog_bytes']:,} | {r['redis_mb']:.0f} | "
            + " | ".join(f"{r['rss_mb'].get(k, 0):.0f} / {r['fds'].get(k, 0)}" for k in roles)
            + " |"
        )
    lines.append("")
    for name, (ok, what) in report["verdict"].items():
        lines.append(f"- {name}: {'pass' if ok else 'FAIL'}: {what}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["minute"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for role in sorted({k for r in rows for k in r["rss_mb"]}):
        a.plot(x, [r["rss_mb"].get(role) for r in rows], label=role)
    a.plot(x, [r["redis_mb"] for r in rows], label="redis (used)", linestyle="--")
    a.set_ylabel("RSS MB")
    a.legend(fontsize=7, ncol=3)
    b.plot(x, [r["p99_ms"] for r in rows], label="p99")
    b.plot(x, [r["p50_ms"] for r in rows], label="p50")
    b.set_ylabel("ms")
    b.set_xlabel("minute")
    b.legend(fontsize=7)
    fig.suptitle("soak: 500 req/s, Redis state, decision log on PostgreSQL")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
