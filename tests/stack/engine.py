"""A private Docker engine for the stack test, and the local images it needs (no registry).

dockerd runs on its own socket, exec root and pid file; its data root lives under
``/var/cache/fraud-mlops`` so that built images (the debootstrap base above all) are reused by
the next run on the same machine. Everything else it creates is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
STACK = PROJECT / ".ci" / "stack"
CACHE = Path(os.environ.get("FRAUD_STACK_CACHE", "/var/cache/fraud-mlops/stack"))
RUN = Path("/run/fraud-mlops-stack")
SOCKET = RUN / "docker.sock"
MIRROR = "http://deb.debian.org/debian"
BRIDGE = "fraudstack0"
# Debian's CLI (20.10) builds with its built-in BuildKit; a newer CLI elsewhere on PATH may
# insist on the buildx plugin, which this machine does not have.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def log(msg: str) -> None:
    print(f"[stack {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def docker_env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "1"}


def docker(*args: str, check: bool = True, timeout: float = 1800, **kw) -> str:
    out = subprocess.run(
        [DOCKER, *args], env=docker_env(), capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and out.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        )
    return out.stdout


def _delete_bridge() -> None:
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


@contextmanager
def dockerd() -> Iterator[None]:
    """Start dockerd (bridge ``fraudstack0``); stop it and remove its bridge afterwards."""
    RUN.mkdir(parents=True, exist_ok=True)
    (CACHE / "docker").mkdir(parents=True, exist_ok=True)
    _delete_bridge()
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "172.29.0.1/16", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    logfile = (RUN / "dockerd.log").open("w")
    proc = subprocess.Popen(
        [
            "dockerd",
            f"--data-root={CACHE / 'docker'}",
            f"--exec-root={RUN / 'exec'}",
            f"--pidfile={RUN / 'docker.pid'}",
            f"--host=unix://{SOCKET}",
            f"--bridge={BRIDGE}",
            "--default-address-pool=base=172.30.0.0/16,size=24",
        ],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [DOCKER, "info"], env=docker_env(), capture_output=True, timeout=10
        ).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((RUN / "dockerd.log").read_text()[-3000:])
            time.sleep(1)
        log("dockerd up")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _delete_bridge()
        log("dockerd stopped, bridge removed")


def socket_gid() -> int:
    """The group owning dockerd's socket: containers that drive the engine join it."""
    return SOCKET.stat().st_gid


def has_image(tag: str) -> bool:
    return (
        subprocess.run(
            [DOCKER, "image", "inspect", tag], env=docker_env(), capture_output=True, timeout=30
        ).returncode
        == 0
    )


def build(tag: str, dockerfile: Path, context: Path, **args: str) -> None:
    t0 = time.monotonic()
    build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
    docker("build", "-q", "-t", tag, "-f", str(dockerfile), *build_args, str(context))
    log(f"built {tag} in {time.monotonic() - t0:.0f}s")


def base_images() -> None:
    """debootstrap rootfs -> fraud-local/rootfs -> base (CA bundle) -> python; cached."""
    if not has_image("fraud-local/rootfs:bookworm"):
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fraud-rootfs-") as root:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", root, MIRROR],
                check=True,
                capture_output=True,
                timeout=900,
            )
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                [DOCKER, "import", "-", "fraud-local/rootfs:bookworm"],
                stdin=tar.stdout,
                env=docker_env(),
                check=True,
                capture_output=True,
            )
            tar.wait()
        log(f"debootstrap base imported in {time.monotonic() - t0:.0f}s")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", STACK / "ca-certificates.crt")
    try:
        build("fraud-local/base:bookworm", STACK / "base.Dockerfile", STACK)
    finally:
        (STACK / "ca-certificates.crt").unlink(missing_ok=True)
    build("fraud-local/python:3.11", STACK / "python.Dockerfile", STACK)


# Images of the stack (tags as in compose.yaml / compose.local.yaml), built here rather than by
# `compose build`, which wants the buildx plugin.
def stack_images() -> None:
    python = {"BASE_IMAGE": "fraud-local/python:3.11"}
    build("fraud-local/postgres:15", STACK / "postgres.Dockerfile", STACK)
    build("fraud-local/prometheus:2.42", STACK / "prometheus.Dockerfile", STACK)
    build("fraud-local/alertmanager:0.25", STACK / "alertmanager.Dockerfile", STACK)
    build("fraud-mlops:latest", PROJECT / "Dockerfile", PROJECT, **python)
    build("fraud-mlops-airflow:latest", PROJECT / "Dockerfile.airflow", PROJECT, **python)
