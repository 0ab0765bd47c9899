"""A Spark executor in a Kubernetes pod (Spark-on-Kubernetes, ``FRAUD_SPARK_MASTER=k8s://...``):
the executor pods run the project's Airflow image, which has Java, pyspark and this project
but not Spark's own image entrypoint. Spark starts an executor pod with ``args: [executor]``
and the ``SPARK_*`` variables below; the pod template (k8s/spark/executor-pod-template.yaml)
makes ``python -m training.spark.k8s_executor`` its command, which starts the executor JVM as
Spark's entrypoint does.

    python -m training.spark.k8s_executor executor
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

BACKEND = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
REQUIRED = (
    "SPARK_DRIVER_URL",
    "SPARK_EXECUTOR_ID",
    "SPARK_EXECUTOR_CORES",
    "SPARK_APPLICATION_ID",
    "SPARK_EXECUTOR_POD_IP",
    "SPARK_EXECUTOR_MEMORY",
)


def command(env: Mapping[str, str], spark_home: Path, java: str = "java") -> list[str]:
    """The executor JVM's command line from the variables Spark sets on an executor pod
    (``SPARK_JAVA_OPT_<n>``: its Java options, in order)."""
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise ValueError(f"not a Spark executor pod: {', '.join(missing)} unset")
    opts = [
        env[k]
        for k in sorted(
            (k for k in env if k.startswith("SPARK_JAVA_OPT_")),
            key=lambda k: int(k.removeprefix("SPARK_JAVA_OPT_") or 0),
        )
    ]
    memory = env["SPARK_EXECUTOR_MEMORY"]
    return [
        java,
        *opts,
        f"-Xms{memory}",
        f"-Xmx{memory}",
        "-cp",
        f"{spark_home / 'conf'}:{spark_home / 'jars'}/*",
        BACKEND,
        "--driver-url", env["SPARK_DRIVER_URL"],
        "--executor-id", env["SPARK_EXECUTOR_ID"],
        "--cores", env["SPARK_EXECUTOR_CORES"],
        "--app-id", env["SPARK_APPLICATION_ID"],
        "--hostname", env["SPARK_EXECUTOR_POD_IP"],
        "--resourceProfileId", env.get("SPARK_RESOURCE_PROFILE_ID", "0"),
        "--podName", env.get("SPARK_EXECUTOR_POD_NAME", ""),
    ]  # fmt: skip


def main() -> None:
    if sys.argv[1:2] not in ([], ["executor"]):
        sys.exit(f"usage: python -m training.spark.k8s_executor executor (got {sys.argv[1:]})")
    from training.spark.standalone import spark_home

    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")
    try:
        cmd = command(os.environ, spark_home(), java)
    except ValueError as exc:
        sys.exit(str(exc))
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
