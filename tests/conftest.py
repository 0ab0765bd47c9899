"""Shared session fixtures: a small simulated dataset, isolated MLflow and Bento stores."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Isolate the stores before anything imports bentoml or mlflow (both read env at import).
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="fraud-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
TRACKING_URI = f"sqlite:///{_SESSION_DIR}/mlruns/mlflow.db"
os.environ["MLFLOW_TRACKING_URI"] = TRACKING_URI
os.environ["FRAUD_MLFLOW_ARTIFACT_ROOT"] = str(_SESSION_DIR / "mlruns" / "artifacts")
os.environ["FRAUD_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from training.core import decision_store, features, schema  # noqa: E402
from training.demo.simulate import SimulationConfig, simulate, write_per_day  # noqa: E402

from . import services  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
# Small but protocol-complete: 75 days cover 2 prequential folds plus the final split.
SMALL = SimulationConfig(n_customers=600, n_terminals=1200, n_days=75, seed=7)


# The tests' Redis (tests/services.py: the session's own, or the machine's): database 15, one key
# prefix per test, every key deleted afterwards.
REDIS_URL = services.REDIS_URL


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the session's private PostgreSQL and Redis when a selected test may reach them."""
    if any(item.get_closest_marker(m) for item in session.items for m in services.NEEDS):
        services.start()


@pytest.fixture(autouse=True, scope="module")
def _session_tracking_uri():
    """After each module, MLflow's tracking URI is the session's store again: a module that
    pointed MLflow at its own server (``mlflow.set_tracking_uri`` also writes the environment)
    must not leave a later module calling a server that is gone."""
    yield
    os.environ["MLFLOW_TRACKING_URI"] = TRACKING_URI
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(TRACKING_URI)


def pytest_unconfigure(config: pytest.Config) -> None:
    services.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_state(request: pytest.FixtureRequest):
    """A factory of empty online states of each kind: in memory, and in a real Redis."""
    from uuid import uuid4

    from serving.redis_state import RedisFeatureState
    from serving.state import InMemoryFeatureState

    made: list[RedisFeatureState] = []

    def make(customer_retention_ms: int, terminal_retention_ms: int):
        if request.param == "memory":
            return InMemoryFeatureState(customer_retention_ms, terminal_retention_ms)
        state = RedisFeatureState.from_url(
            REDIS_URL, customer_retention_ms, terminal_retention_ms, f"test-{uuid4().hex[:12]}"
        )
        made.append(state)
        return state

    yield make
    for state in made:
        state.clear()


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


@pytest.fixture(scope="session")
def champion(small_raw: pd.DataFrame, small_feats: pd.DataFrame):
    """A champion trained on the small set (SQLite MLflow), imported into the Bento store."""
    from training import data, registry
    from training import train as train_mod
    from training.core.config import Settings
    from training.delivery import bento_store

    settings = Settings()
    client = registry.configure(settings)
    layout = data.handbook_layout(small_raw, n_folds=2)
    result = train_mod.train(small_raw, small_feats, layout, grid={"n_estimators": [50]})
    reg = registry.log_training(result, small_raw, small_feats, settings, dataset="small")
    registry.gate(
        client, settings.registered_model, reg.version, small_raw, small_feats, layout.final, 0.0
    )
    imported = bento_store.import_champion(settings)
    return {"settings": settings, "registration": reg, "imported": imported, "result": result}


@pytest.fixture(scope="session")
def service_url(champion, session_dir: Path):
    """`bentoml serve` of the champion, shared by every service test."""
    from .servers import bento_server

    port = free_port()
    env = {"FRAUD_PORT": str(port), "BENTOML_DO_NOT_TRACK": "True"}
    with bento_server(port, env, session_dir / "bento-serve.log") as url:
        yield url


@pytest.fixture(scope="session")
def spark_cluster(session_dir: Path):
    """A real Spark standalone cluster for the session: a master and 2 one-core workers, each
    its own JVM, from pyspark's distribution, on loopback."""
    from training.spark.standalone import StandaloneCluster

    with StandaloneCluster(session_dir / "spark", workers=2, cores=1, memory="1500m") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def spark(spark_cluster):
    """A Spark session on the session's cluster (FRAUD_ENGINE=spark's, as the CLI builds it)."""
    from training.core.config import Settings
    from training.spark.session import spark_session

    settings = Settings(engine="spark", spark_master=spark_cluster.url, spark_executor_memory="1g")
    session = spark_session(settings, app="fraud-mlops-tests")
    yield session
    session.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated decision store: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'decisions.db'}"
        decision_store.upgrade(url)
        yield url
        return
    db = f"fraud_decisions_test_{uuid.uuid4().hex[:8]}"
    services.run_sql(f"CREATE DATABASE {db}")
    url = f"{services.PG}/{db}"
    try:
        decision_store.upgrade(url)
        yield url
    finally:
        services.run_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
