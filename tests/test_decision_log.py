"""The decision log: Alembic migrations, the group-commit journal, and its shipping into
SQLite and a real PostgreSQL (idempotent, a dead worker's journal taken over, the store down)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serving import decision_log as dl
from serving import journal as jn
from serving import shipper as sh
from training.core import decision_store as ds
from training.core import partitions

from .conftest import free_port

HEAD = "0006"  # the newest migration: every upgrade ends there


def decision_line(tx: str, t_ms: int = 1_530_000_000_000, **kw: Any) -> bytes:
    row = {
        "k": "d", "transaction_id": tx, "time_ms": t_ms, "customer_id": "c1",
        "terminal_id": "t1", "amount_cents": 1234, "channel": "card_present",
        "merchant_category": "grocery", "features": {"TX_AMOUNT": 12.34},
        "model_name": "fraud_detector", "model_version": "1", "probability": 0.25,
        "threshold": 0.5, "is_fraud": False, "degraded": False, "api_key": "local",
        "worker": "w", "received_at": t_ms + 5,
    }  # fmt: skip
    row.update(kw)
    return (json.dumps(row) + "\n").encode()


def label_line(event: str, tx: str, fraud: bool, at_ms: int) -> bytes:
    row = {"k": "l", "event_id": event, "transaction_id": tx, "is_fraud": fraud,
           "labelled_at": at_ms, "api_key": "analyst"}  # fmt: skip
    return (json.dumps(row) + "\n").encode()


def store_lines(url: str, lines: list[bytes]) -> None:
    """Journal lines written straight into the store at ``url`` (as the shipper rows them)."""
    d_rows, l_rows = sh.rows_of(lines)
    engine = ds.engine_for(url)
    try:
        with engine.begin() as conn:
            ds.write(conn, d_rows, l_rows)
    finally:
        engine.dispose()


def counts(url: str) -> tuple[int, int]:
    engine = ds.engine_for(url)
    try:
        with engine.connect() as conn:
            return ds.count(conn, ds.decisions), ds.count(conn, ds.label_events)
    finally:
        engine.dispose()


def test_decision_lines_carry_the_feature_vector_exactly() -> None:
    """The feature vector comes back from the journal bit for bit (floats whose shortest
    repr has 17 digits, integers, categories); a line written by the standard ``json`` (the
    journal before orjson) reads the same way."""
    from types import SimpleNamespace

    import numpy as np

    from serving.online_features import TxRecord

    rng = np.random.default_rng(3)
    cols = {
        "A": rng.random(3) * 1e6,
        "B": np.array([1, 2, 3], dtype=np.int64),
        "CAT": np.array(["grocery", "travel", "unknown"], dtype=object),
    }
    cols["A"][1] = 0.1 + 0.2  # a float whose shortest repr has 17 digits
    log = SimpleNamespace(feature_names=["A", "B", "CAT"], worker="w")
    records = [TxRecord(f"t{i}", "c", "t", 1_530_000_000_000 + i, 100 * i) for i in range(3)]
    lines = dl.DecisionLog.decision_lines(  # type: ignore[arg-type]
        log, records, ["k"] * 3, [0.1, 0.2, 0.3], [False, True, False], ["7"] * 3, cols,
        "fraud_detector", 0.15, False,
    )  # fmt: skip
    rows, _ = sh.rows_of([*lines, decision_line("old")])
    for i, row in enumerate(rows[:3]):
        assert row["features"] == {
            "A": float(cols["A"][i]), "B": float(cols["B"][i]), "CAT": cols["CAT"][i]
        }  # fmt: skip
        assert np.float64(row["features"]["A"]).tobytes() == cols["A"][i].tobytes()
        assert row["is_fraud"] == (i == 1) and row["model_version"] == "7"
    assert rows[3]["features"] == {"TX_AMOUNT": 12.34}
    unscored, _ = sh.rows_of(
        dl.DecisionLog.decision_lines(  # type: ignore[arg-type]
            log, records[:1], [None], [0.0], [False], ["7"], None, "m", 0.5, True
        )
    )
    assert unscored[0]["features"] is None


def test_journal_lines_are_the_tables_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision line, scored or sent to /feedback, has exactly the table's fields (its times
    as epoch ms): one definition of a row, the table. A column the lines do not carry is named."""
    from types import SimpleNamespace

    import numpy as np

    from serving.online_features import TxRecord

    log = SimpleNamespace(feature_names=["A"], worker="w")
    records = [TxRecord(f"t{i}", "c", "t", 1_530_000_000_000 + i, 100 * i) for i in range(2)]
    scored = dl.DecisionLog.decision_lines(  # type: ignore[arg-type]
        log, records, ["k"] * 2, [0.1, 0.9], [False, True], ["7"] * 2,
        {"A": np.array([1.0, 2.0])}, "fraud_detector", 0.5, False,
    )  # fmt: skip
    sent = dl.DecisionLog.feedback_record_lines(log, records, "k", "m", "7")  # type: ignore[arg-type]
    assert [json.loads(line)["k"] for line in [*scored, *sent]] == ["b", "b"]  # a line a batch
    decisions, _ = sh.rows_of([*scored, *sent])
    assert {tuple(sorted(row)) for row in decisions} == {
        tuple(sorted(c.name for c in ds.decisions.columns))
    }
    assert [row["kind"] for row in decisions] == ["scored", "scored", "feedback", "feedback"]
    wider = ds.JOURNAL_FIELDS | {"review_queue"}
    monkeypatch.setattr(ds, "JOURNAL_FIELDS", wider)
    with pytest.raises(RuntimeError, match="missing \\['review_queue'\\]"):
        dl.DecisionLog.feedback_record_lines(log, records, "k", "m", "7")  # type: ignore[arg-type]


def test_migrations_create_the_tables_and_run_again_as_a_no_op(store_url: str) -> None:
    assert ds.upgrade(store_url) == HEAD  # the fixture ran it once already
    engine = ds.engine_for(store_url)
    try:
        inspector = sa.inspect(engine)
        assert {"decisions", "label_events", "alembic_version"} <= set(inspector.get_table_names())
        indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("decisions")}
        assert ("tx_day",) in indexed and ("customer_id", "tx_time") in indexed
        # the migration and the tables the code writes agree, column by column
        from training.core import rule_store

        for table in (ds.decisions, ds.label_events, rule_store.rule_sets, rule_store.list_entries):
            live = {c["name"] for c in inspector.get_columns(table.name)}
            assert live == {c.name for c in table.columns}
    finally:
        engine.dispose()


def test_workers_starting_together_all_find_the_store_migrated(tmp_path: Path) -> None:
    """Eight processes migrate one new store at the same moment (workers starting together):
    each ends at the head, none fails because another created a table first."""
    url = f"sqlite:///{tmp_path / 'race' / 'decisions.db'}"
    code = (
        "import sys, time; from training.core import decision_store as ds; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); print(ds.upgrade(sys.argv[1]))"
    )
    start = str(time.time() + 3)  # past every interpreter's start-up
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, start], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]  # fmt: skip
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-800:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [HEAD] * 8


def test_the_feedback_records_migration_keeps_the_decisions_logged_before_it(
    store_url: str,
) -> None:
    """0001 -> 0002 on a store holding decisions: they stay, as kind ``scored``; a feedback
    record (no score) fits after it; the downgrade takes the records out again."""
    from alembic import command

    command.downgrade(ds.alembic_config(store_url), "0001")
    rows, _ = sh.rows_of([decision_line("before")])
    engine = ds.engine_for(store_url)
    try:
        with engine.begin() as conn:
            old = sa.Table("decisions", sa.MetaData(), autoload_with=conn)
            old_columns = set(old.columns.keys())
            conn.execute(
                old.insert(), [{k: v for k, v in r.items() if k in old_columns} for r in rows]
            )
        assert ds.upgrade(store_url) == HEAD
        record = {**rows[0], "transaction_id": "sent", "kind": ds.FEEDBACK, "probability": None,
                  "threshold": None, "is_fraud": None, "features": None}  # fmt: skip
        with engine.begin() as conn:
            ds.write(conn, [record], [])
            kinds = dict(
                conn.execute(sa.select(ds.decisions.c.transaction_id, ds.decisions.c.kind)).all()
            )
        assert kinds == {"before": ds.SCORED, "sent": ds.FEEDBACK}
        command.downgrade(ds.alembic_config(store_url), "0001")
        with engine.connect() as conn:
            assert ds.count(conn, ds.label_events) == 0
            left = conn.execute(sa.text("SELECT transaction_id FROM decisions")).scalars().all()
        assert left == ["before"]
    finally:
        engine.dispose()
        ds.upgrade(store_url)


def log_as_of(conn: sa.Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Decision rows logged as the store's revision had them: only the columns it has (a
    later migration adds the others); those columns. A partitioned store gets the days."""
    table = sa.Table("decisions", sa.MetaData(), autoload_with=conn)
    have = set(table.columns.keys())
    if partitions.partitioned(conn):
        partitions.ensure(conn.engine, partitions.days_of(rows, []))
    conn.execute(table.insert(), [{k: v for k, v in r.items() if k in have} for r in rows])
    return have


def test_the_challengers_migration_adds_the_arm_and_the_shadow_score(store_url: str) -> None:
    """0002 -> 0003: decisions logged before keep no arm; a canary decision with the
    champion's shadow score fits after it; the downgrade drops the columns, not the rows."""
    from alembic import command

    command.downgrade(ds.alembic_config(store_url), "0002")
    rows, _ = sh.rows_of([decision_line("before-0003")])
    engine = ds.engine_for(store_url)
    try:
        with engine.begin() as conn:
            assert "arm" not in log_as_of(conn, rows)
        assert ds.upgrade(store_url) == HEAD
        canary = {**rows[0], "transaction_id": "canary-1", "arm": "canary",
                  "model_version": "9", "shadow_version": "7", "shadow_probability": 0.25,
                  "shadow_is_fraud": False}  # fmt: skip
        with engine.begin() as conn:
            ds.write(conn, [canary], [])
            got = {r["transaction_id"]: r for r in (
                ds.decision(conn, "before-0003"), ds.decision(conn, "canary-1"))}  # fmt: skip
        assert got["before-0003"]["arm"] is None and got["before-0003"]["shadow_version"] is None
        assert got["canary-1"]["arm"] == "canary"
        assert got["canary-1"]["shadow_probability"] == 0.25
        assert got["canary-1"]["shadow_is_fraud"] is False
        command.downgrade(ds.alembic_config(store_url), "0002")
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
        assert left == 2
    finally:
        engine.dispose()
        ds.upgrade(store_url)


def test_a_journal_answers_only_after_its_fsync_and_groups_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(jn.os, "fsync", counting_fsync)
    journal = jn.Journal(tmp_path, "w1")
    order: list[str] = []

    async def batch(i: int) -> None:
        position = journal.write([decision_line(f"tx{i}-{j}") for j in range(10)])
        await journal.durable(position)
        assert journal.synced >= position  # never answered before its bytes were fsync'd
        order.append(f"b{i}")

    async def many() -> None:
        await asyncio.gather(*(batch(i) for i in range(200)))

    asyncio.run(many())
    journal.close()
    lines = (tmp_path / "w1" / "00000001.jsonl").read_bytes().splitlines()
    assert len(lines) == 2000 and len(order) == 200
    file_syncs = len(synced) - 2  # the two folder fsyncs at start
    assert 1 <= file_syncs < 200, file_syncs  # grouped: fewer fsyncs than batches


def test_a_failing_disk_fails_the_answer_not_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = jn.Journal(tmp_path, "w1")

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jn.os, "fsync", broken)

    async def one() -> None:
        await journal.durable(journal.write([decision_line("tx1")]))

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(one())
    with pytest.raises(OSError, match="No space left"):  # and every write after it
        journal.write([decision_line("tx2")])


def test_shipping_stores_each_row_once_and_frees_shipped_segments(
    tmp_path: Path, store_url: str
) -> None:
    journal = jn.Journal(tmp_path / "journal", "w1", segment_bytes=4_000)
    for i in range(30):  # ~500 bytes a line: several segments
        journal.write_durably([decision_line(f"tx{i}"), decision_line(f"tx{i}b")])
    journal.write_durably([label_line("w1:1", "tx1", True, 1_530_000_100_000)])
    journal.write_durably([label_line("w1:2", "tx1", False, 1_530_000_200_000)])
    shipper = sh.Shipper(tmp_path / "journal", store_url)
    first = shipper.ship_once()
    assert (first.decisions, first.labels, first.backlog_bytes) == (60, 2, 0)
    assert counts(store_url) == (60, 2)
    assert len(list((tmp_path / "journal" / "w1").glob("*.jsonl"))) == 1  # only the open one
    # a shipper that lost its offsets (a crash between commit and offset) stores nothing twice
    for mark in (tmp_path / "journal" / "w1").glob("*.shipped"):
        mark.unlink()
    again = shipper.ship_once()
    assert again.lines > 0 and (again.decisions, again.labels) == (0, 0)
    assert counts(store_url) == (60, 2)
    engine = ds.engine_for(store_url)
    with engine.connect() as conn:
        history = ds.label_history(conn, "tx1")
        stored = ds.decision(conn, "tx5")
    engine.dispose()
    assert [h["is_fraud"] for h in history] == [True, False]  # old -> new, kept
    assert stored is not None and stored["features"] == {"TX_AMOUNT": 12.34}
    assert stored["tx_day"].isoformat() == "2018-06-26" and stored["api_key"] == "local"
    shipper.close()
    journal.close()


WRITER = """
import sys, time
from pathlib import Path
from serving import journal as jn
from tests.test_decision_log import decision_line
journal = jn.Journal(Path(sys.argv[1]), "dead-worker")
for i in range(50):
    journal.write_durably([decision_line(f"d{i}")])
with open(journal.segment, "ab") as f:  # a batch torn mid-line by the crash
    f.write(decision_line("torn")[:40])
print("written", flush=True)
time.sleep(60)
"""


def test_the_shipper_delivers_a_live_journal_then_removes_it_once_its_worker_died(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "journal"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
    shipper = sh.Shipper(root, store_url)
    live = shipper.ship_once()  # a live writer's journal: its whole lines, the folder kept
    assert live.decisions == 50 and live.backlog_bytes == 40  # the torn line may be finishing
    assert (root / "dead-worker").exists() and counts(store_url) == (50, 0)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    taken = shipper.ship_once()
    assert taken.decisions == 0 and taken.backlog_bytes == 0  # the torn line: never answered
    assert not (root / "dead-worker").exists()  # delivered, then removed
    assert counts(store_url) == (50, 0)
    shipper.close()


def test_the_store_down_keeps_the_backlog_and_delivers_it_when_back(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "journal"
    journal = jn.Journal(root, "w1")
    for i in range(20):
        journal.write_durably([decision_line(f"tx{i}")])
    down = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"
    if store_url.startswith("sqlite"):
        down = f"sqlite:///{tmp_path / 'unmigrated.db'}"  # no tables: every insert fails
    shipper = sh.Shipper(root, down)
    with pytest.raises(sa.exc.SQLAlchemyError):
        shipper.ship_once()
    assert sh.backlog(root) > 0 and counts(store_url) == (0, 0)
    assert sh.last_delivered(root) is None  # no pass has reached a store
    back = sh.Shipper(root, store_url)
    delivered = back.ship_once()
    assert delivered.decisions == 20 and delivered.backlog_bytes == 0 == sh.backlog(root)
    assert counts(store_url) == (20, 0)
    assert time.time() - (sh.last_delivered(root) or 0) < 5
    back.close()
    shipper.close()
    journal.close()


def test_health_never_shows_the_store_password() -> None:
    shown = sh.redacted("postgresql+psycopg2://fraud:s3cret@db.internal:5432/decisions")
    assert "s3cret" not in shown and "db.internal" in shown


def test_audit_show_export_and_purge(tmp_path: Path, store_url: str) -> None:
    """`fraudops decisions`: one decision with its features and label history; the export with
    each decision's latest label; the purge by transaction day, labels with it."""
    import pandas as pd
    from typer.testing import CliRunner

    from training.cli import app

    root = tmp_path / "journal"
    journal = jn.Journal(root, "w1")
    old_ms, new_ms = 1_500_000_000_000, int(time.time() * 1000) - 3_600_000  # 2017, an hour ago
    journal.write_durably([decision_line("old-1", old_ms), decision_line("new-1", new_ms)])
    journal.write_durably([decision_line("new-2", new_ms + 1000, probability=0.9, is_fraud=True)])
    journal.write_durably(
        [label_line("w1:1", "new-2", True, new_ms + 5000),
         label_line("w1:2", "new-2", False, new_ms + 9000),
         label_line("w1:3", "old-1", True, old_ms + 5000)]
    )  # fmt: skip
    sh.Shipper(root, store_url).ship_once()
    runner = CliRunner()

    shown = runner.invoke(app, ["decisions", "show", "new-2", "--db", store_url])
    assert shown.exit_code == 0, shown.output
    assert "0.9" in shown.output and "TX_AMOUNT" in shown.output
    assert shown.output.index("fraud") < shown.output.rindex("genuine")  # old -> new
    missing = runner.invoke(app, ["decisions", "show", "nope", "--db", store_url])
    assert missing.exit_code == 1 and "no decision" in missing.output

    out = tmp_path / "export.parquet"
    since = time.strftime("%Y-%m-%d", time.gmtime(new_ms / 1000 - 86_400))
    done = runner.invoke(
        app, ["decisions", "export", "--since", since, "--out", str(out), "--db", store_url]
    )
    assert done.exit_code == 0, done.output
    frame = pd.read_parquet(out)
    assert list(frame["transaction_id"]) == ["new-1", "new-2"]  # old-1 is before --since
    assert frame["label"].isna().tolist() == [True, False]
    assert not bool(frame.loc[frame["transaction_id"] == "new-2", "label"].item())  # latest
    assert json.loads(frame["features"].iloc[0]) == {"TX_AMOUNT": 12.34}

    purged = runner.invoke(
        app, ["decisions", "purge", "--older-than-days", "30", "--db", store_url]
    )
    assert purged.exit_code == 0 and "purged 1 decisions and 1 label events" in purged.output
    assert counts(store_url) == (2, 2)
    journal.close()


def test_the_actions_migration_adds_the_rule_columns(store_url: str) -> None:
    """0005 -> 0006: decisions logged before keep no action; one with its action, rule and rule
    set version fits after (a partitioned table passes the columns to its partitions); the
    downgrade drops the columns, not the rows."""
    from alembic import command

    command.downgrade(ds.alembic_config(store_url), "0005")
    rows, _ = sh.rows_of([decision_line("before-0006")])
    engine = ds.engine_for(store_url)
    try:
        with engine.begin() as conn:
            assert "action" not in log_as_of(conn, rows)
        assert ds.upgrade(store_url) == HEAD
        decided = {**rows[0], "transaction_id": "decided-1", "action": "decline",
                   "rule": "block-terminals", "rule_set_version": "v7"}  # fmt: skip
        with engine.begin() as conn:
            ds.write(conn, [decided], [])
            before, after = ds.decision(conn, "before-0006"), ds.decision(conn, "decided-1")
        assert before is not None and after is not None
        assert (before["action"], before["rule"], before["rule_set_version"]) == (None,) * 3
        assert (after["action"], after["rule"], after["rule_set_version"]) == (
            "decline", "block-terminals", "v7"
        )  # fmt: skip
        command.downgrade(ds.alembic_config(store_url), "0005")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one() == 2
    finally:
        engine.dispose()
        ds.upgrade(store_url)
