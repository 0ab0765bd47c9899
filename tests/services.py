"""PostgreSQL and Redis for the test session.

``FRAUD_TEST_SERVICES`` says where they come from:

- ``private`` (the default): a PostgreSQL cluster and a ``redis-server`` of the session's own, on
  free loopback ports, started only when the selected tests need them (a test marked ``postgres``,
  ``redis``, ``server`` or ``slow``) and removed at the end. Needs the Debian binaries that
  ``make tools`` installs (postgresql, redis-server); nothing needs to be running.
- ``machine``: the servers already running on 127.0.0.1:5432 (user postgres, trust) and
  127.0.0.1:6379 (database 15); ``FRAUD_TEST_PG_URL`` / ``FRAUD_TEST_REDIS_URL`` override them.

The URLs are fixed when this module is imported (conftest, before any test module), so modules
may read :data:`PG` and :data:`REDIS_URL` at import; the servers themselves start in
:func:`start`, which the root conftest calls once the selection is known.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MODE = os.environ.get("FRAUD_TEST_SERVICES", "private")
if MODE not in ("private", "machine"):
    raise RuntimeError(f"FRAUD_TEST_SERVICES={MODE!r}: private or machine")
NEEDS = ("postgres", "redis", "server", "slow")  # markers of tests that may reach them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_superuser_command(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the ``postgres`` user."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root needs runuser to start PostgreSQL as user postgres")
    return ["runuser", "-u", "postgres", "--", *argv]


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb, trust on 127.0.0.1), which a test may stop and
    start again: the machine's shared server is never touched."""

    def __init__(self, port: int) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError(
                "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): `make tools` installs "
                "them, or set FRAUD_TEST_SERVICES=machine to use a running server"
            )
        self.bin = Path(found[-1]).parent
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="fraud-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")  # the server runs as postgres
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        self._tool("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres")

    def _tool(self, tool: str, *args: str) -> None:
        subprocess.run(
            as_superuser_command([str(self.bin / tool), *args]), check=True, capture_output=True
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._tool(
            "pg_ctl", "-D", str(self.root / "data"), "-o", options,
            "-l", str(self.root / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: sessions are cut, new connections refused until start()."""
        self._tool("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of its own without persistence (restarted, it comes back empty)."""

    def __init__(self, port: int, log: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: `make tools` installs it, or set "
                "FRAUD_TEST_SERVICES=machine to use a running Redis"
            )
        self.port, self.log = port, log
        self.argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    close = kill


if MODE == "machine":
    PG = os.environ.get("FRAUD_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
    REDIS_URL = os.environ.get("FRAUD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
else:
    _PG_PORT, _REDIS_PORT = free_port(), free_port()
    PG = f"postgresql+psycopg2://postgres@127.0.0.1:{_PG_PORT}"
    REDIS_URL = f"redis://127.0.0.1:{_REDIS_PORT}/15"
_started: list[PrivatePostgres | PrivateRedis] = []


def start() -> None:
    """Start the session's private PostgreSQL and Redis (once; nothing in ``machine`` mode)."""
    if MODE == "machine" or _started:
        return
    pg = PrivatePostgres(_PG_PORT)
    _started.append(pg)
    atexit.register(stop)
    pg.start()
    cache = Path(tempfile.mkdtemp(prefix="fraud-redis-"))
    rd = PrivateRedis(_REDIS_PORT, cache / "redis.log")
    _started.append(rd)
    rd.start()


def stop() -> None:
    while _started:
        _started.pop().close()


def run_sql(sql: str) -> None:
    """One statement, autocommit (CREATE/DROP DATABASE cannot run in a transaction)."""
    import psycopg2

    dsn = PG.replace("postgresql+psycopg2://", "postgresql://") + "/postgres"
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()
