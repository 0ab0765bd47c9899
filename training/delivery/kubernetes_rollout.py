"""Roll-out target ``kubernetes``: the fraud-api Deployment's container image set to the new
version, then watched until every replica runs it — ``kubectl set image`` followed by
``kubectl rollout status``, through the Kubernetes API (in-cluster service account, or a
kubeconfig). Pods never load a model that is not in their image, so nothing can 404."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from training.core.config import Settings

POLL_S = 2.0


class KubernetesRolloutError(RuntimeError):
    """The Deployment could not be read or patched, or its roll-out did not complete."""


@dataclass(frozen=True)
class Deployment:
    """Where the service runs: a container of a Deployment in a namespace."""

    namespace: str
    name: str
    container: str

    @classmethod
    def of(cls, settings: Settings) -> Deployment:
        return cls(settings.kube_namespace, settings.kube_deployment, settings.kube_container)

    def __str__(self) -> str:
        return f"deployment/{self.name} (namespace {self.namespace}, container {self.container})"


def apps_api(settings: Settings) -> Any:
    """An ``AppsV1Api`` on ``settings.kube_config``; without one, the pod's service account
    (in-cluster), else ``~/.kube/config``. Nothing global is configured."""
    from kubernetes import client, config

    if settings.kube_config is None:
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
            return client.AppsV1Api(client.ApiClient(cfg))
        except config.ConfigException:
            pass
    path = str(settings.kube_config) if settings.kube_config else None
    try:
        api_client = config.new_client_from_config(config_file=path, persist_config=False)
    except (config.ConfigException, OSError) as exc:
        raise KubernetesRolloutError(f"no Kubernetes credentials: {exc}") from exc
    return client.AppsV1Api(api_client)


def _call(what: str, target: Deployment, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs, _request_timeout=30)
    except ApiException as exc:
        raise KubernetesRolloutError(
            f"{what} {target}: HTTP {exc.status} {exc.reason} {str(exc.body)[:300]}"
        ) from exc
    except HTTPError as exc:
        raise KubernetesRolloutError(f"{what} {target}: {exc}") from exc


def deployed_image(api: Any, target: Deployment) -> str:
    """The image the Deployment's container is set to."""
    dep = _call("reading", target, api.read_namespaced_deployment, target.name, target.namespace)
    for container in dep.spec.template.spec.containers:
        if container.name == target.container:
            return str(container.image)
    raise KubernetesRolloutError(f"{target}: no container named {target.container}")


SHIPPER = "decision-shipper"  # the sidecar shipping the API's decision journals


def set_image(api: Any, target: Deployment, image: str) -> int:
    """Patch the container's image, and the decision shipper sidecar's when the pod has one
    (a strategic merge on the container's name); the Deployment's new generation."""
    dep = _call("reading", target, api.read_namespaced_deployment, target.name, target.namespace)
    pod: dict[str, Any] = {"containers": [{"name": target.container, "image": image}]}
    if any(c.name == SHIPPER for c in dep.spec.template.spec.init_containers or []):
        pod["initContainers"] = [{"name": SHIPPER, "image": image}]
    body = {"spec": {"template": {"spec": pod}}}
    dep = _call(
        "patching", target, api.patch_namespaced_deployment, target.name, target.namespace, body
    )
    return int(dep.metadata.generation)


def rollout_state(dep: Any, generation: int) -> tuple[bool, str]:
    """(done, what is awaited), by ``kubectl rollout status``'s rules; raises when the
    Deployment reports that its progress deadline passed."""
    status, want = dep.status, dep.spec.replicas
    if (status.observed_generation or 0) < generation:
        return False, "the controller to see the new spec"
    for cond in status.conditions or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            raise KubernetesRolloutError(f"progress deadline exceeded: {cond.message}")
    updated = status.updated_replicas or 0
    if want is not None and updated < want:
        return False, f"{updated} of {want} replicas updated"
    if (status.replicas or 0) > updated:
        return False, f"{(status.replicas or 0) - updated} old replicas to terminate"
    if (status.available_replicas or 0) < updated:
        return False, f"{status.available_replicas or 0} of {updated} updated replicas available"
    return True, "rolled out"


def wait_rolled_out(
    api: Any, target: Deployment, generation: int, timeout_s: float, poll_s: float = POLL_S
) -> int:
    """Wait until every replica of ``generation`` is updated and available; the polls it took.
    KubernetesRolloutError on the progress deadline or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    polls = 0
    while True:
        dep = _call(
            "watching", target, api.read_namespaced_deployment_status, target.name, target.namespace
        )
        polls += 1
        try:
            done, awaiting = rollout_state(dep, generation)
        except KubernetesRolloutError as exc:
            raise KubernetesRolloutError(f"{target}: {exc}") from exc
        if done:
            return polls
        if time.monotonic() >= deadline:
            raise KubernetesRolloutError(
                f"{target}: not rolled out after {timeout_s:.0f}s (waiting for {awaiting})"
            )
        time.sleep(poll_s)


def version_of(image: str) -> str | None:
    """``v<N>``'s N from an image reference (None for another tag)."""
    match = re.search(r":v(\d+)$", image)
    return match.group(1) if match else None


def roll_out_image(settings: Settings, image: str, poll_s: float = POLL_S) -> dict[str, Any]:
    """Set the Deployment to ``image`` and wait until all its replicas serve it."""
    api, target = apps_api(settings), Deployment.of(settings)
    previous = deployed_image(api, target)
    t0 = time.monotonic()
    generation = set_image(api, target, image)
    polls = wait_rolled_out(api, target, generation, settings.rollout_timeout_s, poll_s)
    return {
        "image": image,
        "previous_image": previous,
        "previous_version": version_of(previous),
        "deployment": str(target),
        "generation": generation,
        "polls": polls,
        "seconds": round(time.monotonic() - t0, 1),
    }
