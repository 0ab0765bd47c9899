"""A Spark standalone cluster on this machine, from pyspark's own distribution: a master and
``workers`` workers, each its own JVM (``spark-class ... deploy.master.Master`` / ``Worker``),
all on loopback. What the tests and ``make bench-offline`` run; in Compose the same two
classes are the ``spark-master`` and ``spark-worker`` services."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def spark_home() -> Path:
    """pyspark's distribution (its ``bin/spark-class`` and ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).parent


def java_problem() -> str | None:
    """Why no JVM can start here (None: ``java`` 17+ is on PATH or under JAVA_HOME)."""
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if "JAVA_HOME" in os.environ else None
    if not (java and java.exists()) and shutil.which("java") is None:
        return "no Java: Spark needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class StandaloneCluster:
    """``with StandaloneCluster(work) as c: c.url`` -> ``spark://127.0.0.1:<port>``, every
    worker registered; on exit every JVM is stopped (its process group)."""

    work: Path
    workers: int = 2
    cores: int = 1  # per worker
    memory: str = "2g"  # per worker, what its executors may take
    port: int = 0
    ui_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOG_DIR": str(self.work / "logs"),
            "SPARK_WORKER_DIR": str(self.work / "worker"),
            # executors' Python: this interpreter, which has the project installed
            "PYSPARK_PYTHON": sys.executable,
        }

    def _start(self, name: str, *args: str) -> None:
        log = (self.work / "logs" / f"{name}.log").open("wb")
        cmd = [str(spark_home() / "bin" / "spark-class"), *args]
        self.procs.append(
            subprocess.Popen(
                cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def alive_workers(self) -> int:
        with urllib.request.urlopen(f"http://{HOST}:{self.ui_port}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))

    def start(self, timeout_s: float = 120) -> StandaloneCluster:
        problem = java_problem()
        if problem:
            raise RuntimeError(problem)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self.ui_port = self.ui_port or _free_port()
        self._start(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", HOST, "--port", str(self.port), "--webui-port", str(self.ui_port),
        )  # fmt: skip
        for i in range(self.workers):
            self._start(
                f"worker-{i + 1}", "org.apache.spark.deploy.worker.Worker", self.url,
                "--host", HOST, "--cores", str(self.cores), "--memory", self.memory,
                "--webui-port", str(_free_port()), "--work-dir", str(self.work / f"worker-{i + 1}"),
            )  # fmt: skip
        deadline, seen = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                seen = self.alive_workers()
            except OSError:
                seen = -1
            if seen == self.workers:
                return self
            time.sleep(0.5)
        self.stop()
        logs = "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
            for p in sorted((self.work / "logs").glob("*.log"))
        )
        raise RuntimeError(
            f"Spark standalone cluster not up in {timeout_s:.0f} s "
            f"({max(seen, 0)} of {self.workers} workers)\n{logs}"
        )

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
