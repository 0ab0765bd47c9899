"""Real Prometheus and Alertmanager for tests (Debian packages), with local receivers.

Production rules speak in minutes and days; a test cannot wait that long. ``compress_rules``
divides every range and ``for:`` duration of the committed rule files by a factor, leaving the
expressions and thresholds untouched, so the live test exercises the same rules, faster.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from .servers import stop, wait_http

PROJECT = Path(__file__).resolve().parent.parent
MONITORING = PROJECT / "monitoring"
RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
GRAFANA_DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RANGE = re.compile(r"\[(\d+)([smhdw])\]")
_FOR = re.compile(r"(\bfor:\s*|\boffset\s+)(\d+)([smhdw])\b")


def binary(name: str) -> str:
    """Path of a monitoring binary; a clear failure (not a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run `make tools` (installs prometheus, alertmanager)")
    return path


def _grafana_script(name: str) -> Any:
    """A script of ``monitoring/grafana`` as a module (the folder is not a package)."""
    folder = str(MONITORING / "grafana")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def dashboard_generator() -> Any:
    return _grafana_script("generate")


def dashboard_renderer() -> Any:
    return _grafana_script("render")


def compress(text: str, factor: int) -> str:
    """Divide every ``[range]``, ``offset`` and ``for:`` duration by ``factor`` (at least 1 s)."""

    def seconds(value: str, unit: str) -> int:
        return max(1, int(value) * _UNIT_S[unit] // factor)

    text = _RANGE.sub(lambda m: f"[{seconds(m[1], m[2])}s]", text)
    return _FOR.sub(lambda m: f"{m[1]}{seconds(m[2], m[3])}s", text)


def compress_rules(out: Path, factor: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rule in RULES:
        path = out / rule.name
        path.write_text(compress(rule.read_text(), factor))
        paths.append(path)
    return paths


class Receiver:
    """Slack-compatible webhook on loopback: stores every JSON body it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> str:
        """Everything received, as one string (titles and texts of all attachments)."""
        return json.dumps(self.bodies)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """SMTP server on loopback (aiosmtpd): stores subject and body of every message."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.port = port
        self.messages: list[tuple[str, str]] = []
        inbox = self.messages

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = message_from_bytes(envelope.content)
                body = ""
                for part in msg.walk():
                    if part.get_content_type() == "text/plain":
                        body += part.get_payload(decode=True).decode(errors="replace")
                inbox.append((str(msg["Subject"]), body))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)

    def __enter__(self) -> Mailbox:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def alertmanager_config(webhook_url: str, smtp_port: int) -> dict[str, Any]:
    """The committed routing, pointed at local receivers and with test-sized group timings."""
    cfg = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    cfg["global"]["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    cfg["global"]["smtp_require_tls"] = False
    cfg["templates"] = [str(MONITORING / "alertmanager" / t) for t in cfg["templates"]]
    cfg["route"].update(group_wait="1s", group_interval="2s", repeat_interval="1m")
    for receiver in cfg["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack.pop("api_url_file")
            slack["api_url"] = webhook_url
    return cfg


@contextmanager
def _daemon(cmd: list[str], log: Path, port: int) -> Iterator[str]:
    """A Prometheus-family server on 127.0.0.1:``port``, ready on ``/-/ready``; stopped after."""
    proc = subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, log, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@contextmanager
def alertmanager(workdir: Path, port: int, config: dict[str, Any]) -> Iterator[str]:
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        binary("prometheus-alertmanager"),
        f"--config.file={path}",
        f"--storage.path={workdir / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with _daemon(cmd, workdir / "alertmanager.log", port) as url:
        yield url


@contextmanager
def prometheus(
    workdir: Path, port: int, api_target: str, alertmanager_target: str, factor: int
) -> Iterator[str]:
    """Prometheus scraping the API every second with the compressed committed rules."""
    rules = compress_rules(workdir / "rules", factor)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_target]}]}]},
        "scrape_configs": [
            {
                "job_name": "fraud-api",
                "static_configs": [{"targets": [api_target], "labels": {"service": "fraud-api"}}],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        binary("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
    ]
    with _daemon(cmd, workdir / "prometheus.log", port) as url:
        yield url
