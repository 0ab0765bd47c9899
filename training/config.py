"""Configuration: one pydantic-settings object, env prefix ``FRAUD_``, no side effects at import."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded defaults make one command work with no servers; every field is an env var."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_", env_file=".env", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("data/demo"), description="Default dataset folder")
    mlflow_tracking_uri: str = Field(
        "sqlite:///mlruns/mlflow.db",
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking URI (MLFLOW_TRACKING_URI is honoured)",
    )
    mlflow_artifact_root: Path = Field(Path("mlruns/artifacts"), description="Local artifact root")
    experiment_name: str = "fraud-detection"
    registered_model: str = "fraud-detector"
    bento_model: str = "fraud_detector"
    promotion_margin: float = Field(0.0, ge=0.0, description="Minimum AP gain to take champion")
    review_budget_per_day: int = Field(100, gt=0, description="Alerts per day the team can review")
    host: str = "127.0.0.1"
    port: int = 8080
    access_log: bool = Field(False, description="BentoML access log line per request")
    drift_window: int = Field(
        10_000, ge=100, description="Recent scored transactions the live drift (PSI) covers"
    )
    drift_min_transactions: int = Field(
        1_000, ge=1, description="Transactions in the window before drift is reported"
    )


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process (env and ``.env``)."""
    return Settings()
