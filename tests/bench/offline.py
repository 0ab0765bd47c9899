"""`make bench-offline`: the offline half, local (pandas, one process) against Spark (a
standalone cluster of 2 one-core workers here), at N times the handbook's volume.

For each scale: the data (``fraudops simulate --scale N``, written a day at a time, into
data/scale-N unless it is there), then each step in a process of its own, its wall time and
peak memory sampled every 0.2 s (the whole process tree; for Spark the driver and, apart, the
executors: their JVMs and Python workers):

- local features: ``load_transactions`` + ``offline_features`` over every day (what `fraudops
  train` does first);
- spark features: the same feature pass on the cluster, written to parquet (nothing collected);
- spark window: the handbook layout's 56 days back to the driver with their features (what
  `fraudops train --engine spark` does first without a sample);
- spark sample window: the same window as the weighted sample of ``--sample`` (every fraud,
  that share of the genuine: FRAUD_SAMPLE_GENUINE);
- spark train: `fraudops train --engine spark --grid quick` on that sample, in an MLflow store
  of its own: the feature pass, the sample, the search, the hold-out scored on the cluster,
  the registration and the gate.

A step past ``--memory-gb`` (the machine has 24 GiB) is stopped and reported as out of memory;
one past ``--timeout-min`` as not finished. Writes reports/bench-offline/offline.json and .md::

    python -m tests.bench.offline [--scales 1 10 50] [--days 183] [--timeout-min 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

PROJECT = Path(__file__).resolve().parents[2]
STEPS = ("local-features", "spark-features", "spark-window", "spark-sample-window", "spark-train")


def run_step(step: str, root: Path, master: str, out: Path, sample: float) -> None:
    """One measured step, in this process (``--step``)."""
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if step == "spark-train":
        from training.cli import app

        out.mkdir(parents=True, exist_ok=True)
        os.environ.update(
            FRAUD_ENGINE="spark", FRAUD_SPARK_MASTER=master, FRAUD_SPARK_DRIVER_MEMORY="6g",
            FRAUD_SPARK_EXECUTOR_MEMORY="3g", FRAUD_SAMPLE_GENUINE=str(sample),
            MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db",
            FRAUD_MLFLOW_ARTIFACT_ROOT=str(out / "artifacts"),
        )  # fmt: skip
        app(["train", "--data", str(root), "--grid", "quick"], standalone_mode=False)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        (version,) = client.search_model_versions("name = 'fraud-detector'")
        run = client.get_run(version.run_id)
        rows = int(run.data.params["n_transactions"])
        extra = {
            "version": version.version,
            "aliases": list(client.get_model_version("fraud-detector", version.version).aliases),
            "test_ap": run.data.metrics["test_ap"],
            "sample": sample,
        }
    elif step == "local-features":
        from training.core.features import offline_features
        from training.data import load_transactions

        raw = load_transactions(root)
        rows = len(offline_features(raw))
    else:
        from training.core.config import Settings
        from training.data import layout_days
        from training.spark import features, sources, window
        from training.spark.session import spark_session

        settings = Settings(
            engine="spark", spark_master=master, spark_driver_memory="6g",
            spark_executor_memory="3g",
        )  # fmt: skip
        with spark_session(settings, app=f"bench-{step}") as spark:
            if step == "spark-features":
                features.features(sources.read_transactions(spark, root)).write.mode(
                    "overwrite"
                ).parquet(str(out))
                rows = spark.read.parquet(str(out)).count()
            elif step == "spark-window":
                rows = len(window.training_frames(spark, root, layout_days())[0])
            else:
                rows = len(window.training_window(spark, root, layout_days(), fraction=sample).raw)
    print(json.dumps({"rows": rows, "inner_s": time.perf_counter() - t0, **extra}), flush=True)


def _tree_rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(
    cmd: list[str], env: dict[str, str], executors: Any, limit: int, timeout_s: float
) -> dict[str, Any]:
    """Run ``cmd``; wall time, peak RSS of its tree and of ``executors()``, how it ended."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = peak_exec = 0
    status = "ok"
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        rss = _tree_rss(tree)
        exec_rss = _tree_rss(executors()) if executors else 0
        peak, peak_exec = max(peak, rss), max(peak_exec, exec_rss)
        elapsed = time.perf_counter() - t0
        if rss + exec_rss > limit or elapsed > timeout_s:
            status = "out of memory" if rss + exec_rss > limit else "not finished"
            for p in reversed(tree):
                with_suppress(p.kill)
            break
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    result = {"wall_s": time.perf_counter() - t0, "driver_gb": peak / 2**30,
              "executors_gb": peak_exec / 2**30, "status": status}  # fmt: skip
    if status == "ok" and proc.returncode != 0:
        lines = stderr.decode(errors="replace").splitlines()
        why = [ln for ln in lines if "Exception" in ln or "Error" in ln] or lines[-1:]
        result["status"] = f"failed: {why[0].strip()[:300] if why else proc.returncode}"
    for line in stdout.decode().splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def with_suppress(fn: Any) -> None:
    with contextlib.suppress(psutil.Error):
        fn()


def executor_processes(cluster: Any) -> Any:
    """The executors of ``cluster``: what its worker daemons started (JVMs, Python workers)."""
    workers = [psutil.Process(p.pid) for p in cluster.procs[1:]]

    def find() -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for w in workers:
            with_suppress(lambda w=w: out.extend(w.children(recursive=True)))
        return out

    return find


def ensure_data(scale: int, days: int, env: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    out = PROJECT / "data" / f"scale-{scale}"
    root = out / "transactions"
    if len(list(root.glob("*.parquet"))) == days:
        return root, {"status": "there"}
    cmd = [sys.executable, "-m", "training.cli", "simulate", "--scale", str(scale),
           "--days", str(days), "--out", str(out)]  # fmt: skip
    return root, measure(cmd, env, None, 22 * 2**30, 4 * 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--days", type=int, default=183)
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--timeout-min", type=float, default=60)
    ap.add_argument("--memory-gb", type=float, default=20)
    ap.add_argument("--sample", type=float, default=0.1, help="genuine share, sample steps")
    ap.add_argument("--out", type=Path, default=PROJECT / "reports" / "bench-offline")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--master", default="local[*]", help=argparse.SUPPRESS)
    ap.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        run_step(args.step, args.root, args.master, args.write, args.sample)
        return
    from training.spark.standalone import StandaloneCluster

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-offline-"))
    with StandaloneCluster(work / "cluster", workers=2, cores=1, memory="4g") as cluster:
        for scale in args.scales:
            root, made = ensure_data(scale, args.days, env)
            print(f"[{scale}x] data {root}: {made}", flush=True)
            for step in args.steps:
                cmd = [sys.executable, "-m", "tests.bench.offline", "--step", step,
                       "--root", str(root), "--master", cluster.url, "--sample", str(args.sample),
                       "--write", str(work / f"{step}-{scale}")]  # fmt: skip
                spark = step.startswith("spark")
                r = measure(
                    cmd, env, executor_processes(cluster) if spark else None,
                    int(args.memory_gb * 2**30), args.timeout_min * 60,
                )  # fmt: skip
                r.update(scale=scale, step=step)
                results.append(r)
                print(f"[{scale}x] {step}: {json.dumps(r)}", flush=True)
                (args.out / "offline.json").write_text(json.dumps(results, indent=2))
    (args.out / "offline.md").write_text(render(results))
    print(render(results))


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scale | step | rows | wall s | driver peak GB | executors peak GB | ended |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scale']}x | {r['step']} | {r.get('rows', 0):,} | {r['wall_s']:.0f} | "
            f"{r['driver_gb']:.2f} | {r['executors_gb']:.2f} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
