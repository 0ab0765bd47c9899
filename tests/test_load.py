"""A short smoke of the load test against the shared `bentoml serve`: correct answers, no 5xx.

Throughput is measured by `make bench`, never asserted here.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import KEY

pytestmark = [pytest.mark.slow, pytest.mark.server]
LOCUSTFILE = Path(__file__).parent / "load" / "locustfile.py"


def test_locust_smoke(service_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LOAD_CUSTOMERS": "600",
        "LOAD_TERMINALS": "1200",
        "LOAD_DAYS": "1",
        "LOAD_START_DATE": "2018-06-15",
        "FRAUD_KEY": KEY,
    }
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "6s",
        "--host",
        service_url,
        "--csv",
        str(tmp_path / "smoke"),
        "--only-summary",
        "--stop-timeout",
        "5",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with (tmp_path / "smoke_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20
    assert int(total["Failure Count"]) == 0
    assert int(rows["/predict [1 tx]"]["Request Count"]) > 0
