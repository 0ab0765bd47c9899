"""The release: command lines, image naming, the Docker check (the real roll-out: stack test)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from training.core.config import Settings
from training.delivery import release


def test_image_names_follow_the_model_version() -> None:
    image = release.image_for(Settings(api_image="registry.example/fraud"), "7")
    assert image.ref == "registry.example/fraud:v7"


def test_recreate_command_targets_only_fraud_api_from_the_stack_files(tmp_path: Path) -> None:
    settings = Settings(
        compose_project="fraud-mlops",
        compose_files=os.pathsep.join(["/opt/s/compose.yaml", "/opt/s/compose.local.yaml"]),
        compose_project_dir=Path("/opt/s"),
        compose_env_file=Path("/run/stack.env"),
    )
    cmd = release.compose_command(settings, "up", "-d", release.SERVICE)
    assert Path(cmd[0]).name == "docker-compose" and Path(cmd[0]).exists()
    assert cmd[1:] == [
        "--project-name", "fraud-mlops", "--env-file", "/run/stack.env",
        "--project-directory", "/opt/s", "-f", "/opt/s/compose.yaml",
        "-f", "/opt/s/compose.local.yaml", "up", "-d", "fraud-api",
    ]  # fmt: skip


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = self.socket.accept()
        return request, ("local", 0)


@contextmanager
def engine_socket(path: Path, ping_status: int) -> Iterator[str]:
    """A Docker-Engine-shaped HTTP endpoint on a unix socket: ``/version`` and ``/_ping``
    (answered ``ping_status``) as dockerd answers them; DOCKER_HOST for it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/version"):
                status, body, ctype = 200, b'{"ApiVersion": "1.41"}', "application/json"
            elif self.path.endswith("/_ping"):
                status, body, ctype = (
                    ping_status,
                    b"OK" if ping_status == 200 else b"",
                    "text/plain",
                )
            else:
                status, body, ctype = 404, b'{"message": "page not found"}', "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _UnixHTTPServer(str(path), Handler, bind_and_activate=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("ping_status", "expected"), [(200, True), (500, False)])
def test_docker_check_believes_an_engine_only_when_it_answers_its_ping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ping_status: int, expected: bool
) -> None:
    with engine_socket(tmp_path / "docker.sock", ping_status) as host:
        monkeypatch.setenv("DOCKER_HOST", host)
        assert release.docker_reachable() is expected


def test_docker_check_without_an_engine_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert release.docker_reachable() is False
