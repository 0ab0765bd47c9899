"""`make bench`: the fraud service side by side with its baselines, in one run, one table.

Servers (each alone, pinned to CPU 0; the load generator pinned to CPU 1):
  fraud-api     `bentoml serve service:FraudDetector` through serving.supervisor, as `fraudops
                serve` runs it (this project; API key + both rate limits checked on every
                request, limits never reached; the decision shipper beside, pinned to the load
                generator's CPU as its own container would have its own)
  fraud-api-open  the same with FRAUD_AUTH=off (no key check, no limits)
  fraud-api-nolog  the same as fraud-api with FRAUD_DECISION_LOG=false (no journal, no fsync
                before the answer, no shipping): the decision log's cost
  fraud-api-inline  the same as fraud-api with FRAUD_SHIP_IN_WORKERS=true: the journal shipped
                by a thread of the worker, on its CPU (how it ran before the shipper process)
  fraud-api-shadow  the same as fraud-api with a live challenger in shadow on every batch
                (the champion shadowing itself: the cost of a same-size challenger)
  fraud-api-canary  the same with a canary answering 10 % of the customers
  bentoml-noop  the same API shape and BentoML settings doing nothing (framework ceiling),
                with the same request-path fixes (serving/bentoml_fixes.py) and GC
                setting (serving.bento_config.settle_gc)
  bentoml-noop-stock  the same no-op on BentoML as shipped (no fixes, default GC)
  bentoml-noop-forest  the no-op plus the champion's compiled forest on each batch, nothing
                else (no features, state, metrics): the ceiling the forest alone leaves
  fastapi-seed  FastAPI + uvicorn + the scikit-learn pipeline, one request at a time
  mlflow-serve  `mlflow models serve` of the same champion (input: the feature row)
Runs per server: peak single-transaction throughput (wrk, fixed connections, varied bodies),
a constant 500 req/s offered (hey, 50 clients x 10 q/s: bursts of 50 every 100 ms; in 3
rounds interleaved across the servers, the median of each percentile shown), then
~500 req/s in unsynchronised arrivals (wrk -c50, each connection pausing ~100 ms at random),
then one client alone (wrk -c1), 100-transaction requests (wrk);
fraud-api and the no-ops then run the 100-transaction requests again allowed both CPUs (the
load generator needs ~2 % of one for them), fraud-api and noop-forest with
FRAUD_MODEL_THREADS=2 (two ONNX Runtime threads for batches of 64+, used only while the server
may run on both CPUs).
Plus the model's cost per transaction in process (scikit-learn vs compiled) and server RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from tests.servers import stop, wait_http
from training.core import bento_model

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LUA = Path(__file__).with_name("bodies.lua")
SERVER_CPU, CLIENT_CPU = "0", "1"
PACED_CONNECTIONS, PACED_THINK_MS = 50, 100  # ~500 req/s in unsynchronised arrivals


def sh(cmd: list[str], timeout: float) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def rss_mb(proc: subprocess.Popen) -> tuple[float, float]:
    """(largest process, whole tree) resident memory of a server, in MiB."""
    root = psutil.Process(proc.pid)
    sizes = []
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            sizes.append(p.memory_info().rss)
    return max(sizes) / 2**20, sum(sizes) / 2**20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def tree(pid: int, marker: str) -> list[psutil.Process]:
    """The processes below ``pid`` whose command line holds ``marker``."""
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(p.cmdline()):
                found.append(p)
    return found


def shipper_cpu_seconds(pid: int) -> float:
    """CPU time used so far by the decision shipper below ``pid`` (0: none)."""
    total = 0.0
    for p in tree(pid, "serving.shipper"):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def allow_cpus(proc: subprocess.Popen, cpus: set[int]) -> None:
    """Let every thread of the server's process tree run on ``cpus`` (taskset, after start)."""
    root = psutil.Process(proc.pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):
            for thread in p.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, cpus)


def wrk(
    url: str, bodies: Path, connections: int, seconds: int, think_ms: float | None = None
) -> dict[str, Any]:
    """wrk with varied bodies; with ``think_ms`` each connection pauses a random exponential
    time of that mean before each request (unsynchronised arrivals, see bodies.lua)."""
    out = sh(
        [
            "taskset",
            "-c",
            CLIENT_CPU,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
            "--",
            str(bodies),
            *([str(think_ms)] if think_ms else []),
        ],
        timeout=seconds + 60,
    )
    stats = json.loads(out.strip().splitlines()[-1])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of repeated wrk runs (timings on a shared machine are noisy)."""
    out: dict[str, Any] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    out["runs_rps"] = [round(r["rps"], 1) for r in runs]
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    return out


def rate_seconds(name: str, seconds: int) -> int:
    """The offered rate's duration: the baselines far below 500 req/s queue, 20 s at most."""
    return seconds if name.startswith(("fraud-api", "bentoml-noop")) else min(20, seconds)


def median_rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of the offered rate, interleaved across servers: the median of each
    percentile and of the rate achieved, every answer and failure counted."""
    out: dict[str, Any] = {
        k: float(np.median([r[k] for r in runs])) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")
    }
    out["rounds_p99_ms"] = [round(r["p99_ms"], 1) for r in runs]
    out["ok"] = sum(r["ok"] for r in runs)
    out["failed"] = sum(r["failed"] for r in runs)
    return out


def hey_rate(
    url: str, body: Path, seconds: int, clients: int = 50, qps: int = 10
) -> dict[str, Any]:
    out = sh(
        [
            "taskset",
            "-c",
            CLIENT_CPU,
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(clients),
            "-q",
            str(qps),
            "-t",
            "10",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            f"Authorization: Bearer {BENCH_KEY}",
            "-D",
            str(body),
            url,
        ],
        timeout=seconds + 60,
    )

    def pct(p: str) -> float:
        m = re.search(rf"{p}% in ([0-9.]+) secs", out)
        return float(m.group(1)) * 1000 if m else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get|\[(\d+)\]\s+Post", out) if n)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "ok": codes.get(200, 0),
        "failed": sum(n for c, n in codes.items() if c != 200) + errors,
    }


def make_bodies(work: Path, model_path: Path, columns: list[str]) -> dict[str, Path]:
    """Transactions that continue the champion's data in time, as request bodies."""
    from training.core import features, schema
    from training.core.schema import request_bodies
    from training.demo.simulate import SimulationConfig, simulate

    info = json.loads(bento_model.Layout.of(model_path).info.read_text())
    sim = PROJECT / "data" / "demo" / "simulation.json"
    params = json.loads(sim.read_text()) if sim.exists() else {}
    start = pd.Timestamp(info["data_window"]["data_end"]).normalize() + pd.Timedelta(days=1)
    cfg = SimulationConfig(
        n_customers=params.get("n_customers", 2500),
        n_terminals=params.get("n_terminals", 5000),
        n_days=2,
        start_date=str(start.date()),
        seed=777,
    )
    new = simulate(cfg)
    new[schema.TRANSACTION_ID] = "bench-" + new[schema.TRANSACTION_ID].astype(str)
    txs = request_bodies(new)
    history = schema.normalize(pd.read_parquet(bento_model.Layout.of(model_path).warmup))
    both = schema.normalize(pd.concat([history, new], ignore_index=True))
    feats = features.offline_features(both)[columns].iloc[len(history) :]
    rows = feats.to_numpy(dtype=object).tolist()
    paths = {k: work / f"{k}.jsonl" for k in ("single", "hundred", "f_single", "f_hundred")}
    with paths["single"].open("w") as f:
        for tx in txs:
            f.write(json.dumps({"transactions": [tx]}) + "\n")
    with paths["hundred"].open("w") as f:
        for k in range(0, len(txs) - 100, 100):
            f.write(json.dumps({"transactions": txs[k : k + 100]}) + "\n")
    with paths["f_single"].open("w") as f:
        for row in rows:
            f.write(json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}) + "\n")
    with paths["f_hundred"].open("w") as f:
        for k in range(0, len(rows) - 100, 100):
            body = {"dataframe_split": {"columns": columns, "data": rows[k : k + 100]}}
            f.write(json.dumps(body) + "\n")
    paths["one"] = work / "one.json"
    paths["one"].write_text(paths["single"].open().readline())
    paths["f_one"] = work / "f_one.json"
    paths["f_one"].write_text(paths["f_single"].open().readline())
    return paths


def model_cost(model_path: Path, columns: list[str], meta: dict) -> dict[str, float]:
    """Microseconds per transaction: scikit-learn pipeline vs compiled, at 1/100/1000 rows."""
    from serving.model_bundle import ModelBundle
    from training.core import features, schema

    bundle = ModelBundle.load(model_path, meta)
    history = schema.normalize(pd.read_parquet(bento_model.Layout.of(model_path).warmup))
    frame = features.offline_features(history)[columns].iloc[-1000:]
    out: dict[str, float] = {}
    for n in (1, 100, 1000):
        part = frame.iloc[:n]
        cols = {c: part[c].to_numpy() for c in part.columns}
        for name, fn in (
            ("sklearn", lambda p=part: bundle.pipeline.predict_proba(p)),
            ("compiled", lambda c=cols: bundle.compiled.predict_proba(c)),
        ):
            reps = 20 if name == "sklearn" else 200
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[f"{name}_{n}"] = float(np.median(times)) / n * 1e6
    return out


def explain_cost(model_path: Path, columns: list[str], meta: dict) -> dict[str, Any]:
    """Microseconds per transaction of the reason codes (exact tree SHAP of the champion's
    forest, grouped to its columns) at 1/10/100 rows, and the forest's shape."""
    from serving.model_bundle import ModelBundle
    from training.core import features, schema

    bundle = ModelBundle.load(model_path, meta)
    history = schema.normalize(pd.read_parquet(bento_model.Layout.of(model_path).warmup))
    frame = features.offline_features(history)[columns].iloc[-1100:]
    explainer = bundle.explainer()
    forest = bundle.pipeline.named_steps["forest"]
    out: dict[str, Any] = {
        "trees": len(forest.estimators_),
        "max_depth": max(t.tree_.max_depth for t in forest.estimators_),
        "leaves_per_tree": float(np.mean([t.tree_.n_leaves for t in forest.estimators_])),
    }
    import shap  # the reference implementation, same values

    oracle = shap.TreeExplainer(forest, feature_perturbation="tree_path_dependent")
    explainer.explain(frame.iloc[:1])  # numba's compile (or cache load) out of the timing
    for n in (1, 10, 100):
        times, ref = [], []
        for k in range(min(20, 1000 // n)):
            rows = frame.iloc[k * n : (k + 1) * n]
            part = {c: rows[c].to_numpy() for c in columns}  # named arrays, as the scorer's
            t0 = time.perf_counter()
            explainer.explain(part)
            t1 = time.perf_counter()
            oracle.shap_values(explainer.encoder.matrix(part), check_additivity=False)
            times.append(t1 - t0)
            ref.append(time.perf_counter() - t1)
        out[str(n)] = float(np.median(times)) / n * 1e6
        out[f"shap_{n}"] = float(np.median(ref)) / n * 1e6
    return out


def scoring_cost(model_path: Path, meta: dict, bodies: Path) -> dict[str, float]:
    """Microseconds per transaction of the whole scorer (online features + compiled model +
    recording) on the warmed champion state, per batch size: warm caches (batch after batch)
    and cold (64 MB written between batches, as a busy server's other work and neighbours
    leave the CPU caches; in the server a batch costs about the cold figure)."""
    import gc

    from serving.api_models import Transaction
    from serving.model_bundle import ModelBundle
    from serving.scorer import FraudScorer

    bundle = ModelBundle.load(model_path, meta)
    with bodies.open() as f:
        recs = [Transaction.model_validate(json.loads(line)["transactions"][0]) for line in f]
    records = [t.to_record() for t in recs]
    flush = np.ones(64 * 2**20 // 8)
    out: dict[str, float] = {}
    for cold in (False, True):
        for n in (1, 12, 100):
            scorer = FraudScorer(bundle)
            scorer.warm()
            gc.collect()
            times = []
            for k in range(min(200, len(records) // n)):
                batch = records[k * n : (k + 1) * n]
                if cold:
                    flush += 1.0
                t0 = time.perf_counter()
                scorer.score(batch)
                times.append(time.perf_counter() - t0)
            out[f"{'cold' if cold else 'warm'}_{n}"] = float(np.median(times)) / n * 1e6
    return out


BENCH_KEY = "fm_be7c4000_the-bench-key-limits-on-but-never-reached"


def bench_keys(work: Path) -> Path:
    """The bench's key file: one key with every scope and rate limits far above any load here,
    so fraud-api pays for the key check and both token buckets on every request; the key is
    exported as FRAUD_KEY for wrk (bodies.lua) and sent by hey."""
    from datetime import UTC, datetime

    from training.core import api_keys

    record = api_keys.ApiKey(
        id=api_keys.key_id(BENCH_KEY) or "",
        name="bench",
        scopes=list(api_keys.SCOPES),
        sha256=api_keys.digest(BENCH_KEY),
        requests_per_s=1e7,
        transactions_per_s=1e9,
        created_at=datetime.now(UTC),
    )
    path = work / "api-keys.json"
    api_keys.save(path, api_keys.KeyFile(keys=[record]))
    os.environ["FRAUD_KEY"] = BENCH_KEY
    return path


def own_bentoml_home(work: Path, name: str) -> Path:
    """A BentoML home per bench server sharing the real model store: BentoML keeps its
    Prometheus multiprocess files in the home and empties that folder at start, so servers run
    side by side on one home would each show the others' metrics on /metrics and lose their own.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    real = Path(BentoMLContainer.bentoml_home.get())
    home = work / "homes" / name
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        link = home / store
        if not link.is_symlink():
            (real / store).mkdir(parents=True, exist_ok=True)
            link.symlink_to(real / store)
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "15")))
    ap.add_argument(
        "--rate-seconds", type=int, default=int(os.environ.get("BENCH_RATE_SECONDS", "60"))
    )
    ap.add_argument(
        "--rate-rounds",
        type=int,
        default=int(os.environ.get("BENCH_RATE_ROUNDS", "3")),
        help="the offered rate's seconds split into rounds interleaved across the servers",
    )
    # 64: the logged server waits for an fsync per batch and is latency-bound at 32 in flight
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--repeats",
        type=int,
        default=int(os.environ.get("BENCH_REPEATS", "3")),
        help="peak runs per server; the table shows their median",
    )
    ap.add_argument("--only", nargs="*", default=None, help="subset of servers")
    ap.add_argument("--out", type=Path, default=PROJECT / "reports")
    args = ap.parse_args()
    for tool in ("wrk", "hey", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install -y wrk hey util-linux")

    from training.core.config import get_settings

    settings = get_settings()
    model = bento_model.find(settings.bento_model)
    model_path = Path(model.path)
    info = json.loads(bento_model.Layout.of(model_path).info.read_text())
    columns = info["feature_columns"]
    work = args.out / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "journals", ignore_errors=True)  # no replay of an earlier run's log
    print(f"champion {model.tag} (MLflow v{model.info.metadata.get('mlflow_model_version')})")
    bodies = make_bodies(work, model_path, columns)
    cost = model_cost(model_path, columns, model.info.metadata)
    scoring = scoring_cost(model_path, model.info.metadata, bodies["single"])
    explaining = explain_cost(model_path, columns, model.info.metadata)

    keys = bench_keys(work)
    env = {
        **os.environ,
        "FRAUD_API_KEYS_FILE": str(keys),
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    uri = f"models:/{settings.registered_model}@champion"
    fraud_api = ["python", "-m", "serving.supervisor", "service:FraudDetector", "--port", "{port}"]
    servers = {
        "fraud-api": (fraud_api, "tx"),
        "fraud-api-open": (fraud_api, "tx"),
        "fraud-api-nolog": (fraud_api, "tx"),
        "fraud-api-inline": (fraud_api, "tx"),
        "fraud-api-shadow": (fraud_api, "tx"),
        "fraud-api-canary": (fraud_api, "tx"),
        "bentoml-noop": (
            ["bentoml", "serve", "tests.bench.noop_service:NoopFraudService", "--port", "{port}"],
            "tx",
        ),
        "bentoml-noop-stock": (
            ["bentoml", "serve", "tests.bench.noop_service:NoopFraudService", "--port", "{port}"],
            "tx",
        ),
        "bentoml-noop-forest": (
            [
                "bentoml",
                "serve",
                "tests.bench.noop_forest_service:NoopForestService",
                "--port",
                "{port}",
            ],
            "tx",
        ),
        "fastapi-seed": (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.bench.fastapi_seed:app",
                "--port",
                "{port}",
                "--log-level",
                "warning",
            ],
            "tx",
        ),
        "mlflow-serve": (
            [
                "mlflow",
                "models",
                "serve",
                "-m",
                uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
                "-w",
                "1",
            ],
            "features",
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    # fraud-api and the no-op run side by side (both idle unless loaded) and their runs are
    # interleaved A, B, A, B...: drift of a shared machine then hits both alike.
    groups = [
        [
            "fraud-api",
            "fraud-api-open",
            "fraud-api-nolog",
            "fraud-api-inline",
            "fraud-api-shadow",
            "fraud-api-canary",
            "bentoml-noop",
            "bentoml-noop-stock",
            "bentoml-noop-forest",
        ],
        ["fastapi-seed"],
        ["mlflow-serve"],
    ]
    port = 18080
    for group in groups:
        names = [n for n in group if not args.only or n in args.only]
        live: dict[str, tuple[subprocess.Popen, str, str, Any]] = {}
        try:
            for name in names:
                cmd, kind = servers[name]
                port += 1
                argv = [str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0], *cmd[1:]]
                argv = [a.replace("{port}", str(port)) for a in argv]
                if kind == "tx":
                    argv += ["--host", "127.0.0.1"]
                log = (work / f"{name}.log").open("w")
                proc = subprocess.Popen(
                    ["taskset", "-c", SERVER_CPU, *argv],
                    cwd=PROJECT,
                    env={
                        **env,
                        "BENTOML_HOME": str(own_bentoml_home(work, name)),
                        # large batches on two ONNX Runtime threads, used only while the
                        # server may run on both CPUs (CompiledModel.session_for)
                        **(
                            {"FRAUD_MODEL_THREADS": "2"}
                            if name.startswith("fraud-api") or name == "bentoml-noop-forest"
                            else {}
                        ),
                        **({"FRAUD_AUTH": "off"} if name == "fraud-api-open" else {}),
                        # each server its own journal and store, never the project's own
                        "FRAUD_JOURNAL_DIR": str(work / "journals" / name),
                        "FRAUD_DECISION_DB_URL": f"sqlite:///{work / 'journals' / name}.db",
                        **({"FRAUD_DECISION_LOG": "false"} if name.endswith("-nolog") else {}),
                        **({"FRAUD_SHIP_IN_WORKERS": "true"} if name.endswith("-inline") else {}),
                        **challenger_env(name, model.info.metadata),
                        **({"NOOP_STOCK": "1"} if name.endswith("-stock") else {}),
                        **(
                            {"NOOP_FOREST_ROWS": str(bodies["f_single"])}
                            if name.endswith("-forest")
                            else {}
                        ),
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                url = f"http://127.0.0.1:{port}"
                t0 = time.monotonic()
                ready = url + ("/ping" if kind == "features" else "/readyz")
                wait_http(ready, proc, work / f"{name}.log", timeout=180)
                print(f"[{name}] ready in {time.monotonic() - t0:.1f}s")
                # the shipper off the server's CPU, as its own container or sidecar has it
                for shipper in tree(proc.pid, "serving.shipper"):
                    with contextlib.suppress(psutil.Error, OSError):
                        os.sched_setaffinity(shipper.pid, {int(CLIENT_CPU)})
                live[name] = (
                    proc,
                    url + ("/invocations" if kind == "features" else "/predict"),
                    "f_" if kind == "features" else "",
                    log,
                )
            for _url_name, (_, url, pre, _) in live.items():
                wrk(url, bodies[pre + "single"], 8, 3)  # warm-up
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in live}
            for _ in range(args.repeats):
                for name, (proc, url, pre, _) in live.items():
                    cpu0, ship0 = cpu_seconds(proc.pid), shipper_cpu_seconds(proc.pid)
                    run = wrk(url, bodies[pre + "single"], args.connections, args.seconds)
                    # the server's CPU per request: steadier than req/s on a shared machine;
                    # the shipper's apart (its own CPU; counted in cpu_us before it had one)
                    ship = shipper_cpu_seconds(proc.pid) - ship0
                    served = max(run["requests"], 1)
                    run["cpu_us"] = (cpu_seconds(proc.pid) - cpu0 - ship) / served * 1e6
                    run["shipper_cpu_us"] = ship / served * 1e6
                    runs[name].append(run)
            # the offered rate in rounds interleaved across the servers, like the peaks: a
            # minute's hiccup on the shared machine lands in one round of one server
            rounds = max(1, args.rate_rounds) if len(live) > 1 else 1
            rates: dict[str, list[dict[str, Any]]] = {n: [] for n in live}
            for _ in range(rounds):
                for name, (_, url, pre, _) in live.items():
                    rate_s = rate_seconds(name, args.rate_seconds)
                    rates[name].append(hey_rate(url, bodies[pre + "one"], rate_s // rounds))
            for name, (proc, url, pre, _) in live.items():
                full = name.startswith(("fraud-api", "bentoml-noop"))
                rate_s = rate_seconds(name, args.rate_seconds)
                rate = median_rate(rates[name])
                paced = wrk(
                    url,
                    bodies[pre + "single"],
                    PACED_CONNECTIONS,
                    min(args.seconds, rate_s),
                    PACED_THINK_MS,
                )
                lone = wrk(url, bodies[pre + "single"], 1, min(args.seconds, rate_s))
                batch = wrk(url, bodies[pre + "hundred"], 8, args.seconds)
                batch2 = None
                if full:
                    allow_cpus(proc, {int(SERVER_CPU), int(CLIENT_CPU)})
                    batch2 = wrk(url, bodies[pre + "hundred"], 8, args.seconds)
                    allow_cpus(proc, {int(SERVER_CPU)})
                rss = rss_mb(proc)
                peak = median_run(runs[name])
                results[name] = {
                    "peak": peak,
                    "rate500": rate,
                    "rate_seconds": rate_s,
                    "paced": paced,
                    "lone": lone,
                    "batch100": {**batch, "tx_per_s": batch["rps"] * 100},
                    "batch100_2cpu": batch2 and {**batch2, "tx_per_s": batch2["rps"] * 100},
                    "worker_rss_mb": rss[0],
                    "rss_mb": rss[1],
                }
                print(
                    f"[{name}] peak {peak['rps']:.0f} req/s (runs {peak['runs_rps']}) p99 "
                    f"{peak['p99_ms']:.1f} ms; 500/s: p99 {rate['p99_ms']:.1f} ms, failed "
                    f"{rate['failed']}; paced: p50 {paced['p50_ms']:.2f} ms; "
                    f"1 client: p50 {lone['p50_ms']:.2f} ms; "
                    f"100-tx: {batch['rps'] * 100:.0f} tx/s"
                    + (f" ({batch2['rps'] * 100:.0f} on 2 CPUs)" if batch2 else "")
                )
        finally:
            for proc, _, _, log in live.values():
                stop(proc)
                log.close()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "method": {
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "connections": args.connections,
            "repeats": args.repeats,
            "seconds": args.seconds,
            "rate": "500 req/s offered (hey -c 50 -q 10)",
            "rate_rounds": args.rate_rounds,
        },
        "model_us_per_tx": cost,
        "scorer_us_per_tx": scoring,
        "explain_us_per_tx": explaining,
        "servers": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    table = render(report)
    (args.out / "bench.md").write_text(table)
    print(table)


def forest_budget(api: dict[str, Any], noop: dict[str, Any], forest: dict[str, Any]) -> str:
    """What the forest alone takes of the no-op's ceiling, and what 0.9x of the no-op's peak
    leaves for everything else the service does (CPU per request at peak)."""
    n, f, a = (r["peak"]["cpu_us"] for r in (noop, forest, api))
    return (
        f"Forest alone: peak noop-forest / noop = {forest['peak']['rps'] / noop['peak']['rps']:.2f}"
        f", 100-tx {forest['batch100']['tx_per_s']:,.0f} tx/s; server CPU µs per request at "
        f"peak: noop {n:.0f}, noop-forest {f:.0f}, fraud-api {a:.0f}. 0.9x the noop's peak "
        f"allows ~{n / 0.9:.0f} µs: the forest leaves {n / 0.9 - f:.0f} µs for features, "
        f"state, metrics and middleware, which take {a - f:.0f} µs here"
    )


def challenger_env(name: str, meta: dict[str, Any]) -> dict[str, str]:
    """The shadow and canary servers' settings: the champion as its own challenger (the same
    model size, so the same cost as a challenger of its kind)."""
    mode = {"fraud-api-shadow": "shadow", "fraud-api-canary": "canary"}.get(name)
    if mode is None:
        return {}
    return {
        "FRAUD_CHALLENGER_MODE": mode,
        "FRAUD_CHALLENGER_VERSION": str(meta.get("mlflow_model_version")),
        "FRAUD_CANARY_SHARE": "0.1",
    }


def against(name: str, a: dict[str, Any], other: str, o: dict[str, Any]) -> str:
    """One server's figures as ratios to another's: peak, p99 at 500 req/s, 100-tx requests,
    and CPU per request at peak."""
    return (
        f"peak {name} / {other} = {a['peak']['rps'] / o['peak']['rps']:.2f}; p99 at 500 req/s = "
        f"{a['rate500']['p99_ms'] / o['rate500']['p99_ms']:.2f}x; 100-tx requests "
        f"{a['batch100']['tx_per_s'] / o['batch100']['tx_per_s']:.2f}x; server CPU per request "
        f"at peak {a['peak']['cpu_us']:,.0f} vs {o['peak']['cpu_us']:,.0f} µs"
    )


def render(report: dict[str, Any]) -> str:
    s = report["servers"]
    lines = [
        "| server | peak req/s (1 tx) | p50 / p95 / p99 ms at peak "
        "| 500 req/s offered: p50 / p99 ms, failed | ~500 req/s unsynchronised: p50 / p99 ms "
        "| 1 client: p50 / p99 ms "
        "| 100-tx requests: tx/s (server on 1 CPU / 2 CPUs) "
        "| RSS MB (worker / all) | server CPU µs / request at peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in s.items():
        p, q, b, b2 = r["peak"], r["rate500"], r["batch100"], r.get("batch100_2cpu")
        both = f" / {b2['tx_per_s']:,.0f}" if b2 else ""
        paced, lone = r.get("paced"), r.get("lone")
        one = f"{lone['p50_ms']:.2f} / {lone['p99_ms']:.2f}" if lone else "-"
        unsync = f"{paced['p50_ms']:.2f} / {paced['p99_ms']:.2f}" if paced else "-"
        lines.append(
            f"| {name} | {p['rps']:,.0f} "
            f"| {p['p50_ms']:.1f} / {p['p95_ms']:.1f} / {p['p99_ms']:.1f} "
            f"| {q['p50_ms']:.1f} / {q['p99_ms']:.1f}, {q['failed']} ({q['rps']:.0f} req/s) "
            f"| {unsync} | {one} "
            f"| {b['tx_per_s']:,.0f}{both} "
            f"| {r['worker_rss_mb']:.0f} / {r['rss_mb']:.0f} "
            f"| {p['cpu_us']:,.0f}"
            + (f" (+{p['shipper_cpu_us']:,.0f} shipper)" if p.get("shipper_cpu_us") else "")
            + " |"
        )
    c = report["model_us_per_tx"]
    lines += [
        "",
        "Model cost, µs per transaction (in process, median): "
        + ", ".join(f"{k.replace('_', ' @ ')} rows: {v:.1f}" for k, v in c.items()),
    ]
    if "scorer_us_per_tx" in report:
        sc = report["scorer_us_per_tx"]
        lines.append(
            "Whole scorer (features + model + state), µs per transaction (in process, median), "
            "warm caches / caches flushed between batches: "
            + ", ".join(
                f"{n} tx: {sc[f'warm_{n}']:.1f} / {sc[f'cold_{n}']:.1f}" for n in (1, 12, 100)
            )
        )
    if "explain_us_per_tx" in report:
        ex = report["explain_us_per_tx"]
        lines.append(
            "Reason codes (/explain: exact tree SHAP, grouped to the model's columns), µs per "
            "transaction (in process, median): "
            + ", ".join(f"{n} tx: {ex[n]:,.0f}" for n in ("1", "10", "100"))
            + " (the shap package's TreeExplainer, same values: "
            + ", ".join(f"{ex[f'shap_{n}']:,.0f}" for n in ("1", "10", "100"))
            + f"; forest: {ex['trees']} trees, max depth {ex['max_depth']}, "
            f"{ex['leaves_per_tree']:.0f} leaves a tree)"
        )
    if "fraud-api" in s and "bentoml-noop" in s:
        a, n = s["fraud-api"], s["bentoml-noop"]
        lines.append(
            f"Ratios: peak fraud-api / noop = {a['peak']['rps'] / n['peak']['rps']:.2f}; "
            "p99 at 500 req/s fraud-api / noop = "
            f"{a['rate500']['p99_ms'] / n['rate500']['p99_ms']:.2f}; server CPU per "
            f"request at peak noop / fraud-api = {n['peak']['cpu_us'] / a['peak']['cpu_us']:.2f}"
        )
    if all(k in s for k in ("fraud-api", "bentoml-noop", "bentoml-noop-forest")):
        lines.append(forest_budget(s["fraud-api"], s["bentoml-noop"], s["bentoml-noop-forest"]))
    for first, second, what in (
        ("fraud-api", "fraud-api-open", "API keys + rate limits (FRAUD_AUTH=off without)"),
        ("fraud-api", "fraud-api-nolog",
         "Decision log (journal fsync'd before each answer, shipped to SQLite by the shipper "
         "process)"),
        ("fraud-api-inline", "fraud-api-nolog",
         "Decision log shipped by the workers (FRAUD_SHIP_IN_WORKERS, as before)"),
        ("fraud-api-shadow", "fraud-api", "Shadow challenger on every batch"),
        ("fraud-api-canary", "fraud-api", "Canary on 10 % of the customers"),
    ):  # fmt: skip
        if first in s and second in s:
            lines.append(f"{what}: {against(first, s[first], second, s[second])}")
    if "fraud-api" in s and "bentoml-noop-stock" in s:
        a, n = s["fraud-api"], s["bentoml-noop-stock"]
        lines.append(
            "Against BentoML as shipped: peak fraud-api / noop-stock = "
            f"{a['peak']['rps'] / n['peak']['rps']:.2f}; p99 at 500 req/s "
            f"{a['rate500']['p99_ms'] / n['rate500']['p99_ms']:.2f}"
        )
    if "fraud-api" in s and "mlflow-serve" in s:
        ratio = s["fraud-api"]["peak"]["rps"] / s["mlflow-serve"]["peak"]["rps"]
        lines.append(f"fraud-api / mlflow-serve peak = {ratio:.1f}x")
    m = report["method"]
    lines.append(
        f"Measured on {report['machine']['cpus']} CPUs: server pinned to CPU {m['server_cpu']}, "
        f"load generator to CPU {m['client_cpu']} (taskset); peak = median of "
        f"{m['repeats']} wrk runs of {m['seconds']} s, -c{m['connections']}, varied bodies; "
        f"{m['rate']}"
        + (
            f" in {m['rate_rounds']} rounds interleaved across the servers (median)"
            if m.get("rate_rounds", 1) > 1
            else ""
        )
        + "; then unsynchronised: wrk -c50, each connection pausing an exponential "
        "~100 ms before each request; then 1 client: wrk -c1; 100-tx: wrk -c8, then again "
        "with the server allowed both CPUs (fraud-api and noop-forest: FRAUD_MODEL_THREADS=2, "
        "the second thread used only while allowed both)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
