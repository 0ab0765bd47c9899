"""`fraudops serve` stops cleanly: SIGTERM or SIGINT drains in-flight requests and leaves no
BentoML process (CLI, circusd, workers) behind or holding the port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from training.cli import app
from training.core.schema import request_bodies

from .conftest import free_port
from .servers import BIN, PROJECT, private_home, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.server]
runner = CliRunner()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process_within_15_s_and_drains(
    champion, small_raw, session_dir: Path, signum: int
) -> None:
    port = free_port()
    log = session_dir / f"fraudops-serve-{signum}.log"
    keys = session_dir / f"keys-{signum}" / "api-keys.json"  # none yet: serve creates the local key
    proc = subprocess.Popen(
        [str(BIN / "fraudops"), "serve", "--port", str(port)],
        cwd=PROJECT,
        env={
            **os.environ,
            "BENTOML_DO_NOT_TRACK": "True",
            "FRAUD_API_KEYS_FILE": str(keys),
            "BENTOML_HOME": str(private_home(session_dir / f"home-{signum}")),
            "FRAUD_JOURNAL_DIR": str(session_dir / f"journal-{signum}"),
            "FRAUD_DECISION_DB_URL": f"sqlite:///{session_dir / f'decisions-{signum}.db'}",
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", proc, log)
        # The key it printed, as `make run` shows it, is the one it stored and the one it serves.
        key = re.search(r"export FRAUD_KEY=(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        assert (keys.parent / "local.key").read_text().strip() == key
        assert oct(keys.stat().st_mode & 0o777) == "0o600"
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/test", headers=headers, timeout=30).json()["status"] == "ok"
        assert httpx.get(f"{url}/test", timeout=30).status_code == 401
        tree = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
        assert len(tree) >= 3, tree  # fraudops, bentoml serve / circusd, a worker
        body = {"transactions": request_bodies(small_raw.tail(20))}
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=30, headers=headers) as client:
                while not stop.is_set():
                    try:
                        statuses.append(client.post(f"{url}/predict", json=body).status_code)
                    except httpx.TransportError:
                        return  # the server has stopped accepting: expected once it drains

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        os.kill(proc.pid, signum)  # only the CLI: it must take the rest down
        deadline = t0 + 15
        while time.monotonic() < deadline and any(running(p) for p in tree):
            time.sleep(0.1)
        stopped_s = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(30)
        proc.wait(5)
        left = [p for p in tree if running(p)]
        assert not left, f"still running after {stopped_s:.1f}s: {left}"
        assert stopped_s <= 15
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing holds the port
        print(
            f"{signal.Signals(signum).name}: stopped in {stopped_s:.1f}s, {len(statuses)} answers"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_run_trains_once_then_skips(small_data_dir, monkeypatch) -> None:
    """`fraudops run` (what `make run` calls): trains and imports the first time, then skips."""
    from training.core.config import get_settings

    monkeypatch.setenv("FRAUD_REGISTERED_MODEL", "cli-run-model")
    monkeypatch.setenv("FRAUD_BENTO_MODEL", "cli_run_model")
    get_settings.cache_clear()
    try:
        args = ["run", "--data", str(small_data_dir), "--grid", "quick", "--no-serve"]
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        assert "training the first model" in first.output
        assert "-> champion" in first.output and "imported as cli_run_model:" in first.output
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
        assert "training" not in second.output
        assert "champion already in the Bento store" in second.output
    finally:
        get_settings.cache_clear()
