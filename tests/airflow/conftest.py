"""Airflow tests: metadata on a fresh PostgreSQL database, the project's dags/ folder.

Kept in their own folder: importing Airflow reconfigures logging for the whole session.
The environment is set here, before anything imports airflow; the database is created and
migrated by a session fixture and dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers import BIN, PG, PROJECT, psql

DB = f"fraud_airflow_test_{uuid.uuid4().hex[:8]}"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fraud-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{DB}",
    }
)
if str(PROJECT / "dags") not in sys.path:
    sys.path.insert(0, str(PROJECT / "dags"))


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[str]:
    psql(f"CREATE DATABASE {DB}")
    try:
        out = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ.copy(),
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield DB
    finally:
        from airflow.settings import dispose_orm

        dispose_orm()
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
