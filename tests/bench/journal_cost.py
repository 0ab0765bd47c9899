"""Cost of the decision journal, in process: what an answer waits for (a batch's lines written
and fsync'd by the group-commit thread), and the lines' encoding per transaction. Batches of
1, 12 and 100 decisions, ``--batches`` each, 8 in flight at a time as adaptive batching has them;
prints medians and p99. Then the shipper's cost per decision (parsing the lines, writing them to
the store in passes of 5,000, CPU and wall) on a temporary SQLite file, or on ``--store``::

    python -m tests.bench.journal_cost [--dir /var/lib/fraud-journal] [--batches 400]
        [--store postgresql+psycopg2://postgres@127.0.0.1:5432/scratch] [--private-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from serving.decision_log import DecisionLog
from serving.journal import Journal, worker_name
from serving.online_features import TxRecord

COLUMNS = [f"F{i}" for i in range(19)]  # the demo champion's feature count


def batch(n: int, start: int) -> tuple[list[TxRecord], dict[str, np.ndarray]]:
    records = [
        TxRecord(f"tx{start + i}", "c1", "t1", 1_530_000_000_000 + i, 1234) for i in range(n)
    ]
    return records, {c: np.random.default_rng(start).random(n) for c in COLUMNS}


def encode(records: list[TxRecord], cols: dict[str, np.ndarray]) -> list[bytes]:
    """DecisionLog.decision_lines without a journal or shipper (the same code)."""
    n = len(records)
    log = SimpleNamespace(feature_names=COLUMNS, worker="bench")
    return DecisionLog.decision_lines(  # type: ignore[arg-type]
        log, records, ["bench"] * n, [0.1] * n, [False] * n, ["1"] * n, cols,
        "fraud_detector", 0.5, False,
    )  # fmt: skip


async def durable_waits(journal: Journal, encoded: list[list[bytes]]) -> list[float]:
    """Seconds from each batch's write to its fsync, 8 batches in flight at a time."""
    waits: list[float] = []

    async def one(lines: list[bytes]) -> None:
        t = time.perf_counter()
        await journal.durable(journal.write(lines))
        waits.append(time.perf_counter() - t)

    for k in range(0, len(encoded), 8):
        await asyncio.gather(*(one(b) for b in encoded[k : k + 8]))
    return waits


def shipping(url: str, passes: int = 3, n: int = 5_000) -> None:
    """Parse and store ``passes`` x ``n`` decisions as the shipper does; µs per decision. On
    PostgreSQL twice: executemany through the URL's driver (what the shipper did inside the
    workers before) and COPY through psycopg 3 (the shipper process now)."""
    from serving.shipper import rows_of
    from training.core import decision_store

    decision_store.upgrade(url)
    ways = [False, True] if url.startswith("postgresql") else [False]
    for way, bulk in enumerate(ways):
        engine = decision_store.engine_for(url, bulk=bulk)
        how = f"{engine.dialect.name} {'COPY' if bulk else 'executemany'} ({engine.dialect.driver})"
        try:
            for k in range(passes):
                records, cols = batch(n, (way * passes + k + 1) * 1_000_000)
                lines = encode(records, cols)
                t0, c0 = time.perf_counter(), time.process_time()
                rows, _ = rows_of(lines)
                t1, c1 = time.perf_counter(), time.process_time()
                with engine.begin() as conn:
                    decision_store.write(conn, rows, [])
                wall = (time.perf_counter() - t1) / n * 1e6
                cpu = (time.process_time() - c1) / n * 1e6
                print(
                    f"shipping to {how}: parse {(t1 - t0) / n * 1e6:.1f} µs, "
                    f"store {cpu:.1f} µs CPU / {wall:.1f} µs wall a decision (pass {k + 1}, "
                    f"parse CPU {(c1 - c0) / n * 1e6:.1f} µs)"
                )
        finally:
            engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=None, help="journal folder (default: a temp dir)")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--store", default=None, help="decision store URL (default: a temp SQLite)")
    ap.add_argument(
        "--private-pg", action="store_true", help="also a PostgreSQL cluster of its own (initdb)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        journal = Journal(Path(tmp), worker_name())
        for size in (1, 12, 100):
            batches = [batch(size, k * size) for k in range(args.batches)]
            t0 = time.perf_counter()
            encoded = [encode(records, cols) for records, cols in batches]
            encode_us = (time.perf_counter() - t0) / (args.batches * size) * 1e6
            waits = asyncio.run(durable_waits(journal, encoded))
            waits.sort()
            print(
                f"{size:>3} tx a batch: durable after median "
                f"{statistics.median(waits) * 1e3:.2f} ms, p99 "
                f"{waits[int(0.99 * (len(waits) - 1))] * 1e3:.2f} ms; "
                f"encoding {encode_us:.1f} µs a transaction"
            )
        journal.close()
        shipping(args.store or f"sqlite:///{tmp}/store.db")
    if args.private_pg:
        from tests.conftest import free_port
        from tests.services import PrivatePostgres

        pg = PrivatePostgres(free_port())
        try:
            pg.start()
            shipping(pg.url)
        finally:
            pg.close()


if __name__ == "__main__":
    main()
