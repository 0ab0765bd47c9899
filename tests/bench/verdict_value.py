"""What fast verdicts are worth (issue 31, item 6): the demo's next fortnight through a fresh
`fraudops serve` of the champion three times, with the labels arriving 7 days after, 1 day after,
and 7 days after plus the review queue's verdicts the same day; the AP, the recall at the review
budget and CP@100 of what the service answered live in each case. Then the default rule set's
backtest on the first case's decision log (hits, precision, alerts a day).

    make run                       # the demo data and its champion, once; then stop it
    BENTOML_HOME=.bentoml python -m tests.bench.verdict_value --days 14
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
from sklearn.metrics import average_precision_score

from training.core import backtest, rules, schema
from training.core.config import get_settings
from training.demo import replay as replay_mod
from training.metrics import card_precision_top_k

PROJECT = Path(__file__).resolve().parents[2]
CASES = (  # (name, label delay in days, the queue's verdicts the same day)
    ("chargebacks after 7 days", 7, False),
    ("chargebacks after 1 day", 1, False),
    ("after 7 days + the queue's verdicts the same day", 7, True),
)


def serve(port: int, work: Path) -> subprocess.Popen:
    env = {**os.environ, "FRAUD_JOURNAL_DIR": str(work / "journal"),
           "FRAUD_DECISION_DB_URL": f"sqlite:///{work / 'decisions.db'}"}  # fmt: skip
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--port", str(port)],
                            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    raise RuntimeError(f"the service did not start: {(work / 'serve.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def quality(frame: pd.DataFrame, report: replay_mod.ReplayReport, budget: int) -> dict[str, float]:
    """AP, recall at the budget (a day's top answers by score) and CP@100 of the live answers."""
    live = pd.DataFrame(report.answers, columns=["tx", "score", "action"]).set_index("tx")
    truth = frame.assign(tx=frame[schema.TRANSACTION_ID].astype(str)).set_index("tx")
    rows = truth.join(live, how="inner")
    y = rows[schema.TX_FRAUD].to_numpy()
    day = rows[schema.TX_DATETIME].dt.normalize().to_numpy()
    top = rows.assign(day=day).groupby("day")["score"].rank(ascending=False, method="first")
    caught = int(((top <= budget) & (y == 1)).sum())
    alerted = rows["action"] != "approve"
    return {
        "transactions": len(rows),
        "frauds": int(y.sum()),
        "ap": float(average_precision_score(y, rows["score"])),
        "recall_budget": caught / max(int(y.sum()), 1),
        "cp100": card_precision_top_k(
            day, rows[schema.CUSTOMER_ID].to_numpy(), y, rows["score"].to_numpy(), 100
        ),
        "alert_recall": float((alerted & (y == 1)).sum() / max(int(y.sum()), 1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--port", type=int, default=18090)
    args = ap.parse_args()
    settings = get_settings()
    key = settings.local_key_file().read_text().strip()
    frame = replay_mod.next_days(settings.data_dir, args.days)
    budget = settings.review_budget_per_day
    print(f"{len(frame):,} transactions, {int(frame[schema.TX_FRAUD].sum()):,} frauds, "
          f"{args.days} days after {settings.data_dir}; budget {budget} a day")  # fmt: skip
    results, first_store = [], None
    keep = tempfile.mkdtemp(prefix="verdict-value-")
    for i, (name, delay, same_day) in enumerate(CASES):
        work = Path(keep) / f"case{i}"
        work.mkdir()
        proc = serve(args.port, work)
        try:
            t0 = time.perf_counter()
            url = f"http://127.0.0.1:{args.port}"
            queue = budget if same_day else None
            report = replay_mod.replay(url, frame, key, 200, True, delay, queue_budget=queue)
            seconds = time.perf_counter() - t0
        finally:
            stop(proc)
        q = quality(frame, report, budget)
        results.append((name, q, report, seconds))
        print(f"{name}: {q} labels {report.labels_sent} verdicts {report.verdicts_sent} "
              f"in {seconds:.0f}s", flush=True)  # fmt: skip
        if first_store is None:
            first_store = f"sqlite:///{work / 'decisions.db'}"
    print("\n| labels arrive | AP | recall at the budget | CP@100 | alerts' recall |")
    print("|---|---|---|---|---|")
    for name, q, _, _ in results:
        print(f"| {name} | {q['ap']:.3f} | {q['recall_budget']:.3f} | {q['cp100']:.3f} | "
              f"{q['alert_recall']:.3f} |")  # fmt: skip
    start = frame[schema.TX_DATETIME].min().to_pydatetime()
    assert first_store is not None
    bt = backtest.backtest(first_store, rules.default(), rules.default(), start,
                           start + timedelta(days=args.days), {}, 7, budget)  # fmt: skip
    print(f"\ndefault rules on the first case's log, {bt.since}..{bt.until} ({bt.days} days with "
          f"matured labels), {bt.transactions:,} decisions, {bt.frauds:,} frauds:")  # fmt: skip
    print("| rule | action | hits | frauds | precision |\n|---|---|---:|---:|---:|")
    for h in bt.candidate.rules:
        p = "-" if h.precision is None else f"{h.precision:.3f}"
        print(f"| {h.name} | {h.action} | {h.hits:,} | {h.frauds:,} | {p} |")
    o = bt.candidate
    print(f"alerts a day {o.alerts_per_day:.1f} (budget {budget}); precision {o.precision}, "
          f"recall {o.recall}; actions {o.actions}")  # fmt: skip
    print(f"work folders: {keep}")


if __name__ == "__main__":
    main()
