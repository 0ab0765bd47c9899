"""fraud_build_deploy: on each champion promotion, ship it.

import_model -> build -> export -> containerize -> rollout -> smoke_check

Three deployment targets (FRAUD_DEPLOY_TARGET):
- `service` (local, default): the running service hot-swaps (`POST /admin/reload`: the new
  model loads beside the old one and takes over atomically, no request dropped); the image is
  built when a Docker engine is reachable, as an artefact.
- `compose` (the Compose stack): the Bento becomes image `fraud-detector:v<N>`, `:champion` is
  re-pointed to it and Compose recreates the fraud-api container (`up --no-deps
  --force-recreate --wait`; the scheduler has the Docker socket, see docs/operations.md).
- `kubernetes`: the image is pushed to the registry in FRAUD_API_IMAGE and set on the
  fraud-api Deployment, which rolls it out pod by pod; the task waits until every replica is
  updated and available (as `kubectl rollout status`).
If the smoke prediction does not come back from the new version, `champion` goes back to the
previous version, the service is switched back (hot swap or previous image) and the team is
notified.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task
from fraud_common import CHAMPION, DEFAULT_ARGS, channels, settings

from training.core.config import Settings
from training.delivery import bento_store, release
from training.notify import send

log = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parent.parent


def _back_to_previous(
    cfg: Settings, version: str, previous: str | None, exc: Exception, outcome: str
) -> None:
    """The service, then champion, back on the version that was serving; the team is told why,
    and told what the roll-back itself could not do."""
    status = f"champion and the service are back on v{previous}."
    if previous and previous != version:
        try:
            release.rollback(cfg, previous)
        except Exception as failure:  # whatever failed, the message still goes out
            status = f"roll-back incomplete: {failure}"
    send(channels(cfg), f"[fraud-mlops] roll-out of v{version} {outcome}", f"{exc}\n{status}")


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
        imported = bento_store.import_champion(settings())
        return {"tag": imported.tag, "version": imported.mlflow_version, "new": imported.created}

    @task
    def build() -> str:
        """`bentoml build` of the project (the model is the champion just imported)."""
        return bento_store.build_bento(PROJECT, settings().bento_base_image)

    @task
    def export(tag: str) -> str:
        cfg = settings()
        out = cfg.bentos_dir if cfg.bentos_dir.is_absolute() else PROJECT / cfg.bentos_dir
        return str(bento_store.export_bento(tag, out))

    @task
    def containerize(tag: str, imported: dict[str, Any]) -> str | None:
        """Image `<FRAUD_API_IMAGE>:v<version>` of the Bento, when a Docker engine is reachable."""
        if not release.docker_reachable():
            log.info("no Docker engine reachable: containerize skipped")
            return None
        return release.containerize(settings(), tag, imported["version"])

    @task(retries=0)
    def rollout(imported: dict[str, Any], image: str | None) -> dict[str, Any]:
        """Switch the service to the new champion (hot swap, or the new image in Compose);
        if that fails, champion and the service go back to the version that was serving."""
        cfg = settings()
        version = imported["version"]
        if cfg.deploy_target in ("compose", "kubernetes") and image is None:
            raise RuntimeError(
                f"deploy target {cfg.deploy_target} needs the image: no Docker engine reached"
            )
        previous = release.served_version(cfg)
        try:
            answer = release.roll_out(cfg, version)
        except Exception as exc:
            _back_to_previous(cfg, version, previous, exc, "failed")
            raise
        if answer is None:
            log.info("no fraud API at %s: nothing to roll out locally", cfg.api_url)
            return {"skipped": True, "version": version}
        return {"skipped": False, **answer}

    @task(retries=0)
    def smoke_check(rolled: dict[str, Any]) -> dict[str, Any]:
        """The service answers with the new version; otherwise roll back and notify."""
        if rolled.get("skipped"):
            return rolled
        cfg = settings()
        try:
            return release.smoke_prediction(cfg, rolled["model_version"])
        except Exception as exc:
            _back_to_previous(
                cfg, rolled["model_version"], rolled.get("previous_version"), exc, "rolled back"
            )
            raise

    imported = import_model()
    tag = build()
    imported >> tag
    image = containerize(tag, imported)
    export(tag) >> image
    smoke_check(rollout(imported, image))


fraud_build_deploy()
