"""fraud_retrain: the daily retraining, the seed's five stages.

performance_check -> data_prep -> training -> deployment -> publish_champion -> notification,
and decision_retention beside them.

FRAUD_TRAINING_SOURCE picks the data: the files under FRAUD_DATA_DIR, or the decision log with
its labels (db). From the log, data_prep fixes the window (its ``as_of``) and the training and
the gate read that same window.

Every task is idempotent for its DAG run: re-running a day appends no second data day, registers
no second model version and sends no second notification.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from fraud_common import CHAMPION, DEFAULT_ARGS, channels, data_path, settings

from training import champion_check, lake, notify, pipeline


@dag(
    dag_id="fraud_retrain",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    dagrun_timeout=timedelta(hours=4),
    tags=["fraud-mlops", "training"],
    params={
        "grid": Param(
            settings().retrain_grid,
            description="quick, standard or full (or a dict grid); FRAUD_RETRAIN_GRID sets it",
        ),
        "check_days": Param(7, type="integer", minimum=1, description="Days of live check"),
        "append_days": Param(1, type="integer", minimum=0, description="Demo: days to simulate"),
    },
    doc_md=__doc__,
)
def fraud_retrain() -> None:
    @task
    def performance_check() -> dict[str, Any]:
        """The champion's precision, recall and AP on the latest labelled days, and drift."""
        cfg = settings()
        days = int(get_current_context()["params"]["check_days"])
        return champion_check.check_champion(cfg, data_path(cfg), days=days).to_dict()

    @task
    def data_prep() -> dict[str, Any]:
        """The latest training window, validated (the demo simulator appends a day first)."""
        ctx = get_current_context()
        cfg = settings()
        return pipeline.prepare_data(
            cfg,
            data_path(cfg),
            run_key=ctx["run_id"],
            append_days=int(ctx["params"]["append_days"]),
        ).to_dict()

    @task(execution_timeout=timedelta(hours=3))
    def training(prepared: dict[str, Any]) -> dict[str, Any]:
        """Prequential model search, MLflow run, registered candidate (one per DAG run)."""
        ctx = get_current_context()
        cfg = settings()
        return pipeline.train_candidate(
            cfg,
            data_path(cfg),
            run_key=ctx["run_id"],
            grid=ctx["params"]["grid"],
            as_of=_as_of(prepared),
        ).to_dict()

    @task
    def deployment(candidate: dict[str, Any], prepared: dict[str, Any]) -> dict[str, Any]:
        """Smoke check, then the champion gate on the shared hold-out."""
        cfg = settings()
        return pipeline.deploy_candidate(
            cfg, candidate["version"], data_path(cfg), as_of=_as_of(prepared)
        ).to_dict()

    @task
    def decision_lake() -> dict[str, Any]:
        """Closed days of the decision log into the Parquet lake the Spark engine reads."""
        cfg = settings()
        if not cfg.decision_log or not cfg.lake_url:
            raise AirflowSkipException("FRAUD_LAKE_URL is not set (or the decision log is off)")
        return lake.export(cfg).to_dict()

    # after the lake, never before: a day leaves the store only once the lake has it
    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def decision_retention() -> dict[str, Any]:
        """Decisions older than FRAUD_DECISION_RETENTION_DAYS leave the decision store."""
        cfg = settings()
        if not cfg.decision_log:
            raise AirflowSkipException("FRAUD_DECISION_LOG is off")
        return pipeline.purge_decisions(cfg).to_dict()

    @task(outlets=[CHAMPION])
    def publish_champion(decision: dict[str, Any]) -> dict[str, Any]:
        """Emits the champion Asset event (which starts fraud_build_deploy) on promotion only."""
        if not decision["promoted"]:
            raise AirflowSkipException(f"not promoted: {decision['reason']}")
        return {"version": decision["version"], "previous": decision["previous_champion"]}

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=3)
    def notification() -> list[str]:
        """Summary to the webhook and by email; reports a failed stage too."""
        ctx = get_current_context()
        ti, run_id = ctx["ti"], ctx["run_id"]
        report = {
            name: ti.xcom_pull(task_ids=name)
            for name in ("performance_check", "data_prep", "training", "deployment")
        }
        cfg = settings()
        version = (report["training"] or {}).get("version")
        if version and pipeline.already_notified(cfg, version, run_id):
            return ["already sent"]
        subject, text = notify.summary(report, run_id)
        sent = notify.send(channels(cfg), subject, text)
        if version:
            pipeline.mark_notified(cfg, version, run_id)
        return sent

    check = performance_check()
    prepared = data_prep()
    candidate = training(prepared)
    decision = deployment(candidate, prepared)
    published = publish_champion(decision)
    check >> prepared
    [decision, published] >> notification()
    decision_lake() >> decision_retention()


def _as_of(prepared: dict[str, Any]) -> datetime | None:
    """The window data_prep fixed (decision-log source), for the steps after it."""
    return datetime.fromisoformat(prepared["as_of"]) if prepared.get("as_of") else None


fraud_retrain()
