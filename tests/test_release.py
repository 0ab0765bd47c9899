"""The Compose roll-out's command line and image naming (the real run is the stack test)."""

from __future__ import annotations

import os
from pathlib import Path

from training import deploy, rollout
from training.config import Settings


def test_image_names_follow_the_model_version() -> None:
    image = rollout.image_for(Settings(api_image="registry.example/fraud"), "7")
    assert image.ref == "registry.example/fraud:v7"


def test_recreate_command_targets_only_fraud_api_from_the_stack_files(tmp_path: Path) -> None:
    settings = Settings(
        compose_project="fraud-mlops",
        compose_files=os.pathsep.join(["/opt/s/compose.yaml", "/opt/s/compose.local.yaml"]),
        compose_project_dir=Path("/opt/s"),
        compose_env_file=Path("/run/stack.env"),
    )
    cmd = rollout.compose_command(settings, "up", "-d", rollout.SERVICE)
    assert Path(cmd[0]).name == "docker-compose" and Path(cmd[0]).exists()
    assert cmd[1:] == [
        "--project-name", "fraud-mlops", "--env-file", "/run/stack.env",
        "--project-directory", "/opt/s", "-f", "/opt/s/compose.yaml",
        "-f", "/opt/s/compose.local.yaml", "up", "-d", "fraud-api",
    ]  # fmt: skip


def test_without_a_docker_engine_nothing_claims_to_be_reachable(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert deploy.docker_reachable() is False
