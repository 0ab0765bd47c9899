"""The shipper as a process of its own beside the workers (``python -m serving.shipper``):
it delivers live journals without taking them over, takes turns per folder with any other
shipper, never mistakes a starting worker for a dead one, and stops with a last pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import journal as jn
from serving import shipper as sh

from .servers import PROJECT, wait_for
from .test_decision_log import counts, decision_line, label_line


def test_a_folder_another_shipper_holds_is_skipped_or_waited_for(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "journal"
    journal = jn.Journal(root, "w1")
    journal.write_durably([decision_line("tx1"), decision_line("tx2")])
    shipper = sh.Shipper(root, store_url)
    with sh._flock(journal.dir / ".ship", 0) as held:  # another shipper mid-pass
        assert held
        skipped = shipper.ship_once()
        assert skipped.decisions == 0 and counts(store_url) == (0, 0)
    assert shipper.ship_once(wait_s=5).decisions == 2
    assert counts(store_url) == (2, 0)
    shipper.close()
    journal.close()


def test_a_starting_worker_is_never_taken_for_a_dead_one(tmp_path: Path, store_url: str) -> None:
    """A worker's folder is locked before it gets its name: the shipper never removes it."""
    root = tmp_path / "journal"
    (root / ".w2-starting").mkdir(parents=True)  # mid-creation: no lock yet
    shipper = sh.Shipper(root, store_url)
    shipper.ship_once()
    assert (root / ".w2-starting").exists()
    assert sh.journal_folders(root) == []
    journal = jn.Journal(root, "w3")
    assert sh.journal_folders(root) == [root / "w3"] and not (root / ".w3").exists()
    shipper.ship_once()
    assert (root / "w3").exists()  # alive: its folder stays
    shipper.close()
    journal.close()


def test_a_live_workers_rotated_segments_are_freed_its_open_one_kept(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "journal"
    journal = jn.Journal(root, "w1", segment_bytes=2_000)
    for i in range(20):
        journal.write_durably([decision_line(f"tx{i}")])
    assert len(list(journal.dir.glob("*.jsonl"))) > 3
    shipper = sh.Shipper(root, store_url)
    assert shipper.ship_once().decisions == 20
    assert list(journal.dir.glob("*.jsonl")) == [journal.segment]  # the one being written
    journal.write_durably([decision_line("tx-after")])  # appended to it, delivered next pass
    assert shipper.ship_once().decisions == 1 and counts(store_url) == (21, 0)
    shipper.close()
    journal.close()


def test_the_shipper_process_delivers_until_stopped_then_makes_a_last_pass(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "journal"
    journal = jn.Journal(root, "w1")
    env = {**os.environ, "FRAUD_JOURNAL_DIR": str(root), "FRAUD_DECISION_DB_URL": store_url}
    log = tmp_path / "shipper.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "ship"],
        cwd=PROJECT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        journal.write_durably([decision_line(f"tx{i}") for i in range(100)])
        wait_for(lambda: counts(store_url)[0] == 100, 30, "the shipper's first delivery", 0.2)
        assert time.time() - (sh.last_delivered(root) or 0) < 5
        journal.write_durably([label_line("w1:1", "tx1", True, 1_530_000_100_000)])
        proc.send_signal(signal.SIGSTOP)  # a stopped shipper: the journal waits on disk
        journal.write_durably([decision_line(f"late{i}") for i in range(10)])
        assert sh.backlog(root) > 0
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert counts(store_url) == (110, 1) and sh.backlog(root) == 0
    assert "stopped; 0 bytes left" in log.read_text()
    journal.close()


@pytest.mark.parametrize("lines", [1, 2_000])
def test_copy_and_executemany_store_the_same_rows(
    tmp_path: Path, store_url: str, lines: int
) -> None:
    """Whatever the driver (COPY through psycopg 3 on PostgreSQL), a second delivery of the
    same lines stores nothing."""
    from training.core import decision_store as ds

    rows = [decision_line(f"tx{i}", probability=i / lines) for i in range(lines)]
    d_rows, _ = sh.rows_of(rows)
    engine = ds.engine_for(store_url, bulk=True)
    with engine.begin() as conn:
        assert ds.write(conn, d_rows, []) == (lines, 0)
    with engine.begin() as conn:
        assert ds.write(conn, sh.rows_of(rows)[0], []) == (0, 0)
    with engine.connect() as conn:
        last = ds.decision(conn, f"tx{lines - 1}")
    engine.dispose()
    assert last is not None and last["features"] == {"TX_AMOUNT": 12.34}
    assert last["probability"] == (lines - 1) / lines and last["is_fraud"] is False


def test_batch_lines_are_stored_a_bounded_number_of_rows_a_transaction(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines of whole batches (the workers' format), with a decision line of the format before
    them and label events: every row stored, no database transaction over SHIP_ROWS rows."""
    from types import SimpleNamespace

    import numpy as np

    from serving.decision_log import DecisionLog
    from serving.online_features import TxRecord
    from training.core import decision_store as ds

    log = SimpleNamespace(feature_names=["A"], worker="w")
    lines = [decision_line("old-1")]
    for b in range(4):
        records = [TxRecord(f"b{b}-{i}", "c", "t", 1_530_000_000_000 + i, 10 * i) for i in range(5)]
        lines += DecisionLog.decision_lines(  # type: ignore[arg-type]
            log, records, ["k"] * 5, [0.1] * 5, [False] * 5, ["7"] * 5,
            {"A": np.arange(5.0)}, "fraud_detector", 0.5, False,
        )  # fmt: skip
    lines.append(label_line("e1", "b0-0", True, 1_530_000_100_000))
    sizes: list[int] = []
    write = ds.write

    def counted(conn, d_rows, l_rows):  # type: ignore[no-untyped-def]
        sizes.append(len(d_rows) + len(l_rows))
        return write(conn, d_rows, l_rows)

    monkeypatch.setattr(sh, "SHIP_ROWS", 7)
    monkeypatch.setattr(ds, "write", counted)
    journal = jn.Journal(tmp_path / "journal", "w1")
    journal.write_durably(lines)
    shipper = sh.Shipper(tmp_path / "journal", store_url)
    result = shipper.ship_once()
    assert (result.decisions, result.labels, result.lines) == (21, 1, 6)
    assert counts(store_url) == (21, 1)
    assert sum(sizes) == 22 and max(sizes) <= 7 + 4  # one batch line past the bound at most
    shipper.close()
    journal.close()
