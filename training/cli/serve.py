"""Serving commands and process supervision: ``serve`` (the BentoML tree and the decision
shipper, stopped as a whole), ``ship`` (the shipper alone) and ``run``, the main job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import typer

from training.cli.app import DEMO, PROJECT, DataOpt, app, console
from training.cli.delivery import ensure_imported
from training.cli.keys import local_key
from training.cli.lifecycle import ensure_champion
from training.core.config import get_settings

STOP_GRACE_S = 15.0  # SIGTERM/SIGINT: in-flight requests drain, then what is left is killed


def stop_tree(root: int, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM ``root`` and every process below it (BentoML's circusd and its workers, which run
    in sessions of their own), wait up to ``grace`` seconds while they drain, then SIGKILL what
    is left, including a worker respawned meanwhile."""
    import psutil

    def running(pid: int) -> bool:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return False

    def tree(pids: set[int]) -> set[int]:
        """``pids`` and their descendants, those still running."""
        found = set(pids)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        return {pid for pid in found if running(pid)}

    known = tree({root})
    for pid in known:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while known and time.monotonic() < deadline:
        time.sleep(0.1)
        known = tree(known)
    for pid in known:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@app.command()
def serve(
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Serve the Bento-store champion with `bentoml serve` and the decision shipper beside the
    workers (blocks). A dead worker or shipper is restarted within a second or two. SIGTERM or
    Ctrl-C drains in-flight requests and stops every process within 15 s.

    Example: `fraudops serve --port 8080`
    """
    settings = get_settings()
    env = {
        **os.environ,
        "FRAUD_HOST": host or settings.host,
        "FRAUD_PORT": str(port or settings.port),
    }
    cmd = [
        sys.executable,
        "-m",
        "serving.supervisor",  # `bentoml serve`, respawning, with the shipper beside
        "service:FraudDetector",
        "--host",
        env["FRAUD_HOST"],
        "--port",
        env["FRAUD_PORT"],
    ]
    local_key(settings, env["FRAUD_HOST"], env["FRAUD_PORT"])
    console.print(" ".join(cmd))
    # Its own session: a terminal's Ctrl-C reaches this process only, which stops the tree.
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, start_new_session=True)

    def stop(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: stopping the service")
        stop_tree(proc.pid)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = proc.wait()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)


@app.command()
def ship() -> None:
    """Deliver the decision journals under FRAUD_JOURNAL_DIR to FRAUD_DECISION_DB_URL until
    stopped (blocks): what `fraudops serve` runs beside the workers, for a host or container
    of its own on the journal volume. SIGTERM or Ctrl-C makes a last pass, then stops.

    Example: `fraudops ship`
    """
    # The online runtime's own module (the CLI never imports the serving package)
    os.execv(sys.executable, [sys.executable, "-m", "serving.shipper"])


@app.command()
def run(
    data: DataOpt = None,
    grid: str = typer.Option("standard", help="Search grid for the first training."),
    customers: int = typer.Option(DEMO["customers"], help="Demo data: customers."),
    terminals: int = typer.Option(DEMO["terminals"], help="Demo data: terminals."),
    days: int = typer.Option(DEMO["days"], help="Demo data: days."),
    serve_after: bool = typer.Option(True, "--serve/--no-serve"),
) -> None:
    """The main job: simulate demo data if none, train if no champion, import, serve.

    Example: `fraudops run` (what `make run` calls)
    """
    ensure_champion(data, grid, customers=customers, terminals=terminals, days=days)
    ensure_imported()
    if serve_after:
        serve(host=None, port=None)
