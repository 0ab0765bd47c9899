"""Day partitions of the decision store on a real PostgreSQL (migration 0004): the migration
from the unpartitioned schema keeps every row of a populated store and what reads them
(`decisions show`, the replay's query, the export's frame); deliveries make a missing day's
partition; retention drops whole days; SQLite stays one table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from serving import journal as jn
from serving import shipper as sh
from training.cli import app
from training.core import decision_store as ds
from training.core import partitions

from . import services
from .test_decision_log import HEAD, decision_line, label_line, log_as_of

DAY_MS = 86_400_000
T0 = int(datetime(2018, 6, 25, 9, tzinfo=UTC).timestamp() * 1000)  # three days from here


def _database() -> Iterator[str]:
    db = f"fraud_partitions_{uuid.uuid4().hex[:8]}"
    services.run_sql(f"CREATE DATABASE {db}")
    try:
        yield f"{services.PG}/{db}"
    finally:
        services.run_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _database()


@pytest.fixture
def another_pg_url() -> Iterator[str]:
    yield from _database()


def ship(root: Path, url: str, lines: list[bytes]) -> sh.ShipResult:
    journal = jn.Journal(root, f"w-{uuid.uuid4().hex[:6]}")
    journal.write_durably(lines)
    journal.close()  # a stopped worker: delivered to the end, then removed
    shipper = sh.Shipper(root, url)
    try:
        return shipper.ship_once()
    finally:
        shipper.close()


def reads(url: str) -> tuple[pd.DataFrame, str, tuple[int, int]]:
    """What readers see: the replay's and export's frame, `decisions show`, the counts."""
    engine = ds.engine_for(url)
    with engine.connect() as conn:
        frame = ds.decisions_with_labels(conn, datetime(2018, 1, 1, tzinfo=UTC))
        counts = ds.count(conn, ds.decisions), ds.count(conn, ds.label_events)
    engine.dispose()
    shown = CliRunner().invoke(app, ["decisions", "show", "d0-3", "--db", url])
    assert shown.exit_code == 0, shown.output
    return frame, shown.output, counts


def day_lines(day: int, n: int) -> list[bytes]:
    t = T0 + day * DAY_MS
    return [decision_line(f"d{day}-{i}", t + i * 1000, probability=i / n) for i in range(n)]


@pytest.mark.postgres
def test_the_migration_keeps_every_row_and_what_reads_them(
    tmp_path: Path, pg_url: str, another_pg_url: str
) -> None:
    """A store logged at 0003 (unpartitioned), migrated to the head, reads as one that was
    always at the head with the same decisions and labels."""
    command.upgrade(ds.alembic_config(pg_url), "0003")
    lines = [*day_lines(0, 40), *day_lines(1, 40), *day_lines(2, 40)]
    labels = [label_line(f"l:{i}", f"d0-{i}", i % 2 == 0, T0 + 3 * DAY_MS + i) for i in range(6)]
    labels.append(label_line("l:fix", "d0-0", False, T0 + 4 * DAY_MS))
    # logged at 0003: the columns of then (a later migration's are not there yet)
    decisions, events = sh.rows_of(lines + labels)
    engine = ds.engine_for(pg_url)
    with engine.begin() as conn:
        log_as_of(conn, decisions)
        conn.execute(ds.label_events.insert(), events)
    engine.dispose()
    ds.upgrade(another_pg_url)
    assert ship(tmp_path / "j", another_pg_url, lines + labels).decisions == 120
    before = reads(another_pg_url)  # what readers see on a store logged at the head
    assert before[2] == (120, 7)

    t0 = time.perf_counter()
    assert ds.upgrade(pg_url) == HEAD
    migrated_s = time.perf_counter() - t0
    after = reads(pg_url)
    pd.testing.assert_frame_equal(after[0], before[0])
    assert after[1] == before[1] and after[2] == before[2]
    engine = ds.engine_for(pg_url)
    with engine.connect() as conn:
        assert partitions.partitioned(conn)
        days = partitions.existing(conn)
        label_days = partitions.existing(conn, "label_events")
        in_first = conn.exec_driver_sql("SELECT count(*) FROM decisions_p20180625").scalar()
    engine.dispose()
    today = datetime.now(UTC).date()
    assert {date(2018, 6, 25), date(2018, 6, 26), date(2018, 6, 27)} <= set(days)
    assert {today + timedelta(days=d) for d in range(partitions.AHEAD_DAYS + 1)} <= set(days)
    assert {date(2018, 6, 28), date(2018, 6, 29)} <= set(label_days) and in_first == 40
    print(f"\nmigrated 120 decisions + 7 label events into day partitions in {migrated_s:.2f} s")


@pytest.mark.postgres
def test_deliveries_make_missing_days_and_retention_drops_whole_days(
    tmp_path: Path, pg_url: str
) -> None:
    ds.upgrade(pg_url)
    later = [*day_lines(0, 10), *day_lines(1, 10), *day_lines(2, 10), *day_lines(10, 10)]
    labels = [label_line("l:late", "d0-1", True, T0 + 5 * DAY_MS),  # a purged day's, given later
              label_line("l:kept", "d2-1", True, T0 + 5 * DAY_MS)]  # fmt: skip
    assert ship(tmp_path / "j", pg_url, later + labels).decisions == 40
    assert ship(tmp_path / "j2", pg_url, later).decisions == 0  # idempotent across partitions
    engine = ds.engine_for(pg_url)
    with engine.begin() as conn:
        assert date(2018, 7, 5) in partitions.existing(conn)  # made for the delivery
        gone = ds.purge(conn, date(2018, 6, 27))
    with engine.connect() as conn:
        days = partitions.existing(conn)
        left = conn.execute(sa.select(ds.decisions.c.transaction_id)).scalars().all()
        events = conn.execute(sa.select(ds.label_events.c.event_id)).scalars().all()
    engine.dispose()
    assert gone == (20, 1)  # two whole days, and the late label of one of them
    assert date(2018, 6, 25) not in days and date(2018, 6, 26) not in days
    assert sorted(left) == sorted([f"d2-{i}" for i in range(10)] + [f"d10-{i}" for i in range(10)])
    assert events == ["l:kept"]


def test_sqlite_stays_one_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.db'}"
    ds.upgrade(url)
    assert ship(tmp_path / "j", url, day_lines(0, 5)).decisions == 5
    engine = ds.engine_for(url)
    with engine.begin() as conn:
        assert not partitions.partitioned(conn)
        assert ds.purge(conn, date(2018, 6, 26)) == (5, 0)
    engine.dispose()
