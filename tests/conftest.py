"""Shared session fixtures: a small simulated dataset, isolated MLflow and Bento stores."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

# Isolate the stores before anything imports bentoml or mlflow (both read env at import).
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="fraud-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR}/mlruns/mlflow.db"
os.environ["FRAUD_MLFLOW_ARTIFACT_ROOT"] = str(_SESSION_DIR / "mlruns" / "artifacts")
os.environ["FRAUD_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from training import features, schema  # noqa: E402
from training.simulate import SimulationConfig, simulate, write_per_day  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
# Small but protocol-complete: 75 days cover 2 prequential folds plus the final split.
SMALL = SimulationConfig(n_customers=600, n_terminals=1200, n_days=75, seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def small_raw() -> pd.DataFrame:
    return schema.normalize(simulate(SMALL))


@pytest.fixture(scope="session")
def small_feats(small_raw: pd.DataFrame) -> pd.DataFrame:
    return features.offline_features(small_raw)


@pytest.fixture(scope="session")
def small_data_dir(small_raw: pd.DataFrame, session_dir: Path) -> Path:
    out = session_dir / "data" / "transactions"
    write_per_day(small_raw, out)
    return out
