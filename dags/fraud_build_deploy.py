"""fraud_build_deploy: on each champion promotion, ship it.

import_model -> rollout -> smoke_check -> build -> export -> containerize

The local roll-out hot-swaps the running service (`POST /admin/reload`: the new model loads
beside the old one and takes over atomically, no request dropped). If the smoke prediction does
not come back from the new version, `champion` goes back to the previous version, the service
is switched back, and the team is notified. In the Compose stack the API container is recreated
with the new image instead (see the README).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import dag, get_current_context, task
from fraud_common import CHAMPION, DEFAULT_ARGS, channels, settings

from training import deploy
from training.notify import send

log = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parent.parent


@dag(
    dag_id="fraud_build_deploy",
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["fraud-mlops", "deployment"],
    doc_md=__doc__,
)
def fraud_build_deploy() -> None:
    @task
    def import_model() -> dict[str, Any]:
        """The champion into the Bento store (idempotent), with its compiled twin verified."""
        imported = deploy.import_champion(settings())
        return {"tag": imported.tag, "version": imported.mlflow_version, "new": imported.created}

    @task
    def rollout(imported: dict[str, Any]) -> dict[str, Any]:
        """Hot-swap the running service to the new champion."""
        answer = deploy.reload_service(settings(), imported["version"])
        if answer is None:
            log.info("no fraud API at %s: nothing to roll out locally", settings().api_url)
            return {"skipped": True, "version": imported["version"]}
        return {"skipped": False, **answer}

    @task(retries=0)
    def smoke_check(rolled: dict[str, Any]) -> dict[str, Any]:
        """The service answers with the new version; otherwise roll back and notify."""
        if rolled.get("skipped"):
            return rolled
        cfg = settings()
        try:
            return deploy.smoke_prediction(cfg, rolled["model_version"])
        except Exception as exc:
            previous = rolled.get("previous_version")
            if previous:
                deploy.rollback(cfg, previous)
            send(
                channels(cfg),
                f"[fraud-mlops] roll-out of v{rolled['model_version']} rolled back",
                f"{exc}\nchampion and the service are back on v{previous}.",
            )
            raise

    @task
    def build() -> str:
        """`bentoml build` of the project (the model is the champion just imported)."""
        return deploy.build_bento(PROJECT)

    @task
    def export(tag: str) -> str:
        cfg = settings()
        out = cfg.bentos_dir if cfg.bentos_dir.is_absolute() else PROJECT / cfg.bentos_dir
        return str(deploy.export_bento(tag, out))

    @task
    def containerize(tag: str) -> str | None:
        """A local image `fraud-api:<bento version>` when a Docker engine is reachable."""
        if not deploy.docker_reachable():
            log.info("no Docker engine reachable: containerize skipped")
            return None
        version = get_current_context()["ti"].xcom_pull(task_ids="import_model")["version"]
        return deploy.containerize(tag, f"fraud-api:v{version}")

    imported = import_model()
    checked = smoke_check(rollout(imported))
    tag = build()
    checked >> tag
    export(tag) >> containerize(tag)


fraud_build_deploy()
