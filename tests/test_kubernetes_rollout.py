"""The ``kubernetes`` roll-out target through the real ``kubernetes`` client and kubeconfig
loading, against a stand-in API server (tests/kube_api.py: no cluster can run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.core.config import Settings
from training.delivery import kubernetes_rollout as kr
from training.delivery import release

from .conftest import free_port
from .kube_api import fake_cluster

IMAGE = "registry.example/fraud-detector"


def settings(kubeconfig: Path, **kw: object) -> Settings:
    return Settings(
        deploy_target="kubernetes",
        api_image=IMAGE,
        kube_config=kubeconfig,
        api_url=f"http://127.0.0.1:{free_port()}",  # no service answers: no smoke call here
        **kw,  # type: ignore[arg-type]
    )


def test_roll_out_sets_the_image_and_returns_only_when_every_replica_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kr, "POLL_S", 0.01)
    with fake_cluster(tmp_path, f"{IMAGE}:v1", replicas=3) as (cluster, kubeconfig):
        answer = release.roll_out(settings(kubeconfig), "2")
        assert cluster.image() == f"{IMAGE}:v2" and cluster.serving() == f"{IMAGE}:v2"
        assert cluster.patches == [
            {"spec": {"template": {"spec": {"containers": [
                {"name": "fraud-api", "image": f"{IMAGE}:v2"}]}}}}
        ]  # fmt: skip
        assert cluster.rollouts == [{"image": f"{IMAGE}:v2", "polls": 3}]  # one pod a read
        assert answer["model_version"] == "2" and answer["previous_version"] == "1"
        assert answer["previous_image"] == f"{IMAGE}:v1" and answer["polls"] == 4


def test_the_decision_shipper_sidecar_gets_the_new_image_with_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the pod has the shipper sidecar (k8s/fraud-api), both take the image; a pod
    without one gets no incomplete container added (above: containers only)."""
    monkeypatch.setattr(kr, "POLL_S", 0.01)
    with fake_cluster(tmp_path, f"{IMAGE}:v1", replicas=2, sidecar=True) as (cluster, kubeconfig):
        release.roll_out(settings(kubeconfig), "2")
        pod = cluster.dep["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["initContainers"]] == [f"{IMAGE}:v2"]
        assert cluster.image() == f"{IMAGE}:v2" and cluster.serving() == f"{IMAGE}:v2"


def test_a_roll_out_that_stalls_fails_and_the_roll_back_restores_the_previous_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new pods never get ready: the progress deadline fails the roll-out; the roll-back
    puts v1 back on every replica first, then says MLflow (down here) could not follow."""
    monkeypatch.setattr(kr, "POLL_S", 0.01)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, not after ~4 min
    with fake_cluster(tmp_path, f"{IMAGE}:v1") as (cluster, kubeconfig):
        cluster.broken.add(f"{IMAGE}:v2")
        cfg = settings(kubeconfig, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(kr.KubernetesRolloutError, match="progress deadline exceeded"):
            release.roll_out(cfg, "2")
        assert cluster.serving() == f"{IMAGE}:v1"  # never switched
        with pytest.raises(release.RollbackError, match="the service is back on v1"):
            release.rollback(cfg, "1")
        assert cluster.image() == f"{IMAGE}:v1" and cluster.serving() == f"{IMAGE}:v1"
        assert [r["image"] for r in cluster.rollouts] == [f"{IMAGE}:v1"]


def test_a_roll_out_past_its_timeout_fails_naming_what_it_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kr, "POLL_S", 0.05)
    with fake_cluster(tmp_path, f"{IMAGE}:v1") as (cluster, kubeconfig):
        cluster.broken.add(f"{IMAGE}:v2")
        cluster.deadline_polls = 10**6  # no progress deadline set on the Deployment
        cfg = settings(kubeconfig, rollout_timeout_s=10)
        monkeypatch.setattr(cfg, "rollout_timeout_s", 0.2)
        with pytest.raises(
            kr.KubernetesRolloutError,
            match=r"not rolled out after 0s \(waiting for 1 of 3 replicas updated\)",
        ):
            release.roll_out(cfg, "2")


def test_a_missing_deployment_or_container_is_named(tmp_path: Path) -> None:
    with fake_cluster(tmp_path, f"{IMAGE}:v1") as (_, kubeconfig):
        with pytest.raises(kr.KubernetesRolloutError, match=r"reading deployment/nope.*HTTP 404"):
            release.roll_out(settings(kubeconfig, kube_deployment="nope"), "2")
        with pytest.raises(kr.KubernetesRolloutError, match="no container named api"):
            release.roll_out(settings(kubeconfig, kube_container="api"), "2")


def test_no_credentials_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(kr.KubernetesRolloutError, match="no Kubernetes credentials"):
        release.roll_out(settings(tmp_path / "missing-kubeconfig"), "2")
