"""Configuration: one pydantic-settings object, env prefix ``FRAUD_``, no side effects at import."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Embedded defaults make one command work with no servers; every field is an env var."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_", env_file=".env", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("data/demo"), description="Default dataset folder")
    engine: Literal["local", "spark"] = Field(
        "local",
        description="Where the offline half runs (the feature pass, the training window's "
        "sample, the hold-out's scoring): this process with pandas (local), or Apache Spark "
        "at FRAUD_SPARK_MASTER (spark)",
    )
    sample_genuine: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of each day's genuine transactions the training window keeps "
        "(every fraud is kept; rows are weighted back; the hold-out is still scored in full). "
        "1 trains on everything; e.g. 0.1 brings a tenth of the window to the training node",
    )
    spark_master: str = Field(
        "local[*]",
        description="Spark master: spark://host:7077 (a standalone cluster) or local[*] (a JVM "
        "beside this process)",
    )
    spark_driver_host: str = Field(
        "127.0.0.1", description="The address executors reach the driver on (this host's)"
    )
    spark_driver_memory: str = Field("2g", description="The driver JVM's heap")
    spark_executor_memory: str = Field("1g", description="Each executor's heap")
    lake_url: str | None = Field(
        None,
        description="The decision log as a day-partitioned Parquet lake (a local path or any "
        "fsspec URL): written a closed day at a time by the retraining DAG's decision_lake task "
        "and `fraudops decisions export-lake`, read by the Spark engine",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="More Spark properties, as JSON (e.g. Spark-on-Kubernetes': the image, the "
        "namespace, the executor pod template; k8s/spark/)",
    )
    spark_shuffle_partitions: int = Field(
        0, ge=0, description="Shuffle partitions (0: 4 per executor core the cluster has)"
    )
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
    model_selection: Literal["one_se", "best_ap"] = Field(
        "one_se",
        description="Which searched candidate wins: the cheapest to serve (fewest expected tree "
        "comparisons a prediction) among those within one standard error of the best "
        "validation AP (one_se), or the best validation AP (best_ap)",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    access_log: bool = Field(False, description="BentoML access log line per request")
    bentoml_fixes: bool = Field(
        True, description="Apply the request-path fixes of serving.bentoml_fixes at start-up"
    )
    bentoml_fixes_skip: str = Field(
        "",
        description="Comma-separated fixes not to apply, e.g. gather_batch (traffic always "
        "light: a lone request then skips the batch's three event-loop iterations)",
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1_024,
        description="Largest request body (413 beyond it, before parsing): room for 1,000 "
        "transactions with every field at its longest, pretty-printed",
    )
    max_in_flight: int = Field(
        512, ge=1, description="Requests in flight per worker before 503 + Retry-After"
    )
    clock: Literal["stream", "wall"] = Field(
        "stream",
        description="The service clock transaction times are checked against: the latest "
        "accepted transaction time (stream: the demo, replays of past data) or the wall clock "
        "(wall: live traffic)",
    )
    clock_max_step_s: int = Field(
        86_400,
        ge=60,
        description="stream clock: how far after the clock a transaction may be (so the most "
        "one request moves it)",
    )
    clock_max_skew_s: int = Field(
        300, ge=0, description="wall clock: how far in the future a transaction may be"
    )
    decision_log: bool = Field(
        True,
        description="Log every decision and label (journal fsync'd before the answer, shipped "
        "to the decision store)",
    )
    decision_db_url: str = Field(
        "sqlite:///.fraud/decisions.db",
        description="The decision store: SQLite for one machine, PostgreSQL for the stack",
    )
    decision_retention_days: int = Field(
        540,
        ge=1,
        description="Days of decisions kept (card disputes can come up to ~18 months later)",
    )
    training_source: Literal["files", "db"] = Field(
        "files",
        description="What retraining reads: the data files, or the decision log joined with "
        "the labels (db; days before the first logged transaction come from the files)",
    )
    label_delay_days: int = Field(
        7,
        ge=0,
        description="Label policy of the db source: a transaction with no fraud label this many "
        "days after it happened counts as genuine; younger ones wait",
    )
    training_window_days: int = Field(
        120,
        ge=21,
        description="db source: days of transactions before the label horizon a retraining reads",
    )
    rules_refresh_s: float = Field(
        10.0,
        gt=0,
        description="How often a worker reads the rule set and lists again (a change made "
        "through /admin/rules or /admin/lists reaches every worker at once; one made with "
        "`fraudops rules apply` or `fraudops lists` within this)",
    )
    ship_in_workers: bool = Field(
        False,
        description="Each worker ships the journals in a thread of its own (a plain `bentoml "
        "serve` with no shipper beside it); off: `python -m serving.shipper` does, which "
        "`fraudops serve` starts and Compose and Kubernetes run beside the API",
    )
    shipper_metrics_port: int | None = Field(
        None,
        description="The shipper process's own /metrics port (rows stored); the backlog and "
        "the delivery age are the API's metrics either way",
    )
    journal_dir: Path = Field(
        Path(".fraud/journal"),
        description="Per-worker decision journals (local disk; a persistent volume in the stack)",
    )
    challenger_mode: Literal["off", "shadow", "canary"] = Field(
        "off",
        description="Live challenger: off; shadow (scored beside the champion, answers "
        "unchanged); canary (a share of customers answered by it, rolled back automatically)",
    )
    challenger_version: str | None = Field(
        None,
        description="MLflow version of the challenger in the Bento store (default: the newest "
        "model imported as challenger that is not the served one)",
    )
    shadow_share: float = Field(
        1.0, gt=0, le=1, description="shadow: share of batches the challenger also scores"
    )
    canary_share: float = Field(
        0.05,
        gt=0,
        le=1,
        description="canary: share of customers (stable hash of customer_id) it answers",
    )
    canary_min_labels: int = Field(
        50,
        ge=1,
        description="canary: labelled alerts per arm before live precision can roll it back",
    )
    canary_precision_margin: float = Field(
        0.1,
        ge=0,
        le=1,
        description="canary: rolled back when its live precision is this much below the champion's",
    )
    canary_error_margin: float = Field(
        0.01,
        ge=0,
        le=1,
        description="canary: rolled back when its scoring error rate exceeds the champion's by "
        "this much",
    )
    canary_latency_ratio: float = Field(
        2.0,
        ge=1,
        description="canary: rolled back when its model time a batch exceeds the champion's "
        "by this factor (after 200 batches)",
    )
    drift_window: int = Field(
        10_000, ge=100, description="Recent scored transactions the live drift (PSI) covers"
    )
    drift_min_transactions: int = Field(
        1_000, ge=1, description="Transactions in the window before drift is reported"
    )
    state_backend: Literal["memory", "redis"] = Field(
        "memory",
        description="Online feature state: in the serving process (one worker), or in Redis "
        "(shared by several workers and replicas)",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis of the shared state")
    redis_timeout_ms: int = Field(
        50,
        ge=5,
        le=5_000,
        description="Timeout of each state call on the scoring path (no retries; the call fails "
        "and the service degrades instead)",
    )
    state_failure: Literal["reject", "fallback"] = Field(
        "reject",
        description="While the state store is unavailable: 503 + Retry-After (reject), or "
        'scores without history flagged "degraded": true (fallback)',
    )
    state_prefix: str = Field(
        "fraud", pattern=r"^[A-Za-z0-9_.-]+$", description="Key prefix of the state in Redis"
    )
    workers: int = Field(
        1, ge=1, le=64, description="Serving worker processes (more than 1 needs the Redis state)"
    )
    model_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="ONNX Runtime threads for batches of 64+ transactions "
        "(0 = auto: 2 when the process may use two or more CPUs, else 1)",
    )
    retrain_grid: str = Field(
        "standard", description="Default search grid of the daily retraining (quick/standard/full)"
    )
    bentos_dir: Path = Field(Path("bentos"), description="Where exported .bento archives go")
    api_image: str = Field(
        "fraud-detector", description="Image repository of the containerized Bento (tags v<N>)"
    )
    bento_base_image: str | None = Field(
        None, description="docker.base_image for `bentoml build` (default: BentoML's own)"
    )
    deploy_target: Literal["service", "compose", "kubernetes"] = Field(
        "service",
        description="How a new champion goes live: hot swap of the running service, a new "
        "image and a recreated fraud-api container in the Compose stack, or a new image "
        "rolled out to the Kubernetes Deployment",
    )
    kube_namespace: str = Field("fraud", description="Namespace of the fraud-api Deployment")
    kube_deployment: str = Field("fraud-api", description="The Deployment the roll-out patches")
    kube_container: str = Field("fraud-api", description="Its container whose image is set")
    kube_config: Path | None = Field(
        None, description="kubeconfig for the roll-out (default: in-cluster, then ~/.kube/config)"
    )
    rollout_timeout_s: int = Field(
        600, ge=10, description="Longest a Kubernetes roll-out may take before it is rolled back"
    )
    compose_project: str = "fraud-mlops"
    compose_files: str = Field("compose.yaml", description="Compose files, os.pathsep-separated")
    compose_project_dir: Path | None = None
    compose_env_file: Path | None = None
    api_url: str = Field(
        "http://127.0.0.1:8080", description="The running fraud API the roll-out switches"
    )
    auth: Literal["keys", "off"] = Field(
        "keys",
        description="API keys with scopes (keys), or none with loopback clients only (off)",
    )
    api_keys_file: Path = Field(
        Path(".fraud/api-keys.json"),
        description="Key file (hashes, scopes, limits) the service reads; `fraudops keys` "
        "manages it (`make run` creates a local key on first run)",
    )
    metrics_auth: bool = Field(False, description="/metrics needs a key with scope read")
    admin_key: SecretStr | None = Field(
        None,
        description="Key the roll-out sends: scope admin for /admin/reload, read for its smoke "
        "check on /test",
    )
    review_host: str = Field("127.0.0.1", description="`fraudops review`: the queue's address")
    review_port: int = Field(8082, description="`fraudops review`: the queue's port")
    review_secret: SecretStr | None = Field(
        None,
        description="Signs the review queue's sign-in cookies (unset: a random one a process, "
        "so a restart signs every analyst out)",
    )
    review_secure_cookie: bool = Field(
        False, description="The sign-in cookie only over HTTPS (set it behind a TLS proxy)"
    )
    review_session_hours: float = Field(8.0, gt=0, description="A sign-in lasts this long")
    notify_webhook_url: str | None = Field(None, description="Slack-compatible webhook URL")
    notify_smtp_host: str | None = None
    notify_smtp_port: int = 25
    notify_smtp_starttls: bool = False
    notify_smtp_user: str | None = None
    notify_smtp_password: SecretStr | None = None
    notify_email_from: str = "fraud-mlops@localhost"
    notify_email_to: str = Field("", description="Comma-separated recipients")

    def local_key_file(self) -> Path:
        """Where ``make run`` keeps its own key (beside the key file, owner-only)."""
        return self.api_keys_file.with_name("local.key")

    def skipped_fixes(self) -> set[str]:
        """The BentoML fixes ``bentoml_fixes_skip`` names (checked by the service at start-up)."""
        return set(comma_list(self.bentoml_fixes_skip))

    def model_thread_count(self) -> int:
        """``model_threads``, with 0 resolved against the CPUs this process may use."""
        if self.model_threads:
            return self.model_threads
        return min(2, usable_cpus())

    @model_validator(mode="after")
    def _workers_share_state(self) -> Settings:
        if self.workers > 1 and self.state_backend != "redis":
            raise ValueError(
                "FRAUD_WORKERS > 1 needs FRAUD_STATE_BACKEND=redis: each worker would otherwise "
                "keep its own feature state and see only its share of the transactions"
            )
        return self

    @field_validator("bento_base_image", "compose_project_dir", "compose_env_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (settings that hold several values)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def allowed_cpus() -> int:
    """CPUs this process may run on now: its affinity where the OS has one (Linux), else the
    machine's CPU count (macOS has no ``sched_getaffinity``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on (affinity), capped by a cgroup v2 CPU quota (a container
    limit of 1.5 CPUs counts as 1); at least 1."""
    cpus = allowed_cpus()
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: affinity only
    return max(1, cpus)


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process (env and ``.env``)."""
    return Settings()
