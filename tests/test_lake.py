"""The decision log as a day-partitioned Parquet lake: closed days written once, a file a day
and table, from SQLite or PostgreSQL (Spark's read of it: tests/test_spark.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from training import lake
from training.core.config import Settings

from .test_decision_log import decision_line, label_line, store_lines

DAY_MS = 86_400_000
T0 = int(datetime(2018, 4, 1, tzinfo=UTC).timestamp() * 1000)  # 2018-04-01 00:00 UTC


def _fill(url: str) -> None:
    """12 decisions over 2018-04-01..04 (3 a day, customers c0-c2), labels given on 04-02
    (two, one of them changed on 04-05) and 04-04."""
    lines = [
        decision_line(f"tx{d}-{k}", T0 + d * DAY_MS + k * 3_600_000, customer_id=f"c{k}")
        for d in range(4)
        for k in range(3)
    ]
    lines += [
        label_line("e1", "tx0-0", True, T0 + 1 * DAY_MS + 60_000),
        label_line("e2", "tx0-1", True, T0 + 1 * DAY_MS + 120_000),
        label_line("e3", "tx2-2", True, T0 + 3 * DAY_MS + 60_000),
        label_line("e4", "tx0-1", False, T0 + 4 * DAY_MS + 60_000),  # changed its mind
    ]
    store_lines(url, lines)


def test_closed_days_are_written_once_a_file_a_day(store_url: str, tmp_path: Path) -> None:
    _fill(store_url)
    settings = Settings(decision_db_url=store_url, lake_url=str(tmp_path / "lake"))
    done = lake.export(settings)  # the store's clock: 2018-04-04, still open
    assert done.until == "2018-04-04"
    assert done.days == {
        "decisions": ["2018-04-01", "2018-04-02", "2018-04-03"],
        "label_events": ["2018-04-02"],  # 04-04's and 04-05's days are still open
    }
    assert done.rows == {"decisions": 9, "label_events": 2}
    day = pd.read_parquet(lake.partition(settings.lake_url or "", "decisions", date(2018, 4, 2)))
    assert list(day["transaction_id"]) == ["tx1-0", "tx1-1", "tx1-2"]  # the store's order
    assert day["tx_time"].dt.tz is not None and day["features"].map(type).eq(str).all()
    assert lake.export(settings).rows == {"decisions": 0, "label_events": 0}  # nothing new
    again = lake.export(settings, until=date(2018, 4, 10), rewrite=True)
    assert again.rows == {"decisions": 12, "label_events": 4}
    assert again.days["label_events"] == ["2018-04-02", "2018-04-04", "2018-04-05"]


def test_no_lake_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FRAUD_LAKE_URL"):
        lake.export(Settings(decision_db_url=f"sqlite:///{tmp_path}/d.db"))
