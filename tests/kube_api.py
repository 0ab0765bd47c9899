"""A stand-in for the Kubernetes API server (none can run here: no cluster, no images): one
Deployment, read and patched over HTTP as the real API serves it to the ``kubernetes``
client, and a controller that rolls a new template out one replica per status read (surge 1,
like k8s/fraud-api's strategy). Images listed in ``broken`` never become available; after
``deadline_polls`` reads the Deployment reports ``ProgressDeadlineExceeded``, as the real
controller does past ``progressDeadlineSeconds``."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeCluster:
    def __init__(self, namespace: str, name: str, container: str, image: str, replicas: int):
        self.namespace, self.name, self.container = namespace, name, container
        self.broken: set[str] = set()
        self.deadline_polls = 4
        self.patches: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.rollouts: list[dict[str, Any]] = []  # per generation: polls it took to finish
        self.dep: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": container, "image": image}]},
                },
            },
            "status": {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ],
            },
        }
        self._polls = 0
        self._serving = image

    @property
    def path(self) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}"

    def image(self) -> str:
        return str(self.dep["spec"]["template"]["spec"]["containers"][0]["image"])

    def serving(self) -> str:
        """The image every available replica runs (the one last rolled out completely)."""
        return self._serving

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.patches.append(body)
            spec = body.get("spec", {}).get("template", {}).get("spec", {})
            pod = self.dep["spec"]["template"]["spec"]
            for field in ("containers", "initContainers"):
                for change in spec.get(field, []):  # strategic merge: by name
                    named = [c for c in pod.get(field, []) if c["name"] == change["name"]]
                    for c in named:
                        c.update(change)
                    if not named:  # the real merge adds it (an incomplete container)
                        pod.setdefault(field, []).append(dict(change))
            self.dep["metadata"]["generation"] += 1
            status = self.dep["status"]
            status["updatedReplicas"] = 0
            status["conditions"] = [
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
            ]
            self._polls = 0
            return copy.deepcopy(self.dep)

    def status_read(self) -> dict[str, Any]:
        """One controller step, then the Deployment as the API returns it."""
        with self.lock:
            meta, spec, status = self.dep["metadata"], self.dep["spec"], self.dep["status"]
            want = spec["replicas"]
            if status["observedGeneration"] < meta["generation"]:
                status["observedGeneration"] = meta["generation"]
            elif self.image() in self.broken:  # the new pod never gets ready
                self._polls += 1
                status["updatedReplicas"] = 1
                status["replicas"] = want + 1
                status["availableReplicas"] = want
                if self._polls >= self.deadline_polls:
                    status["conditions"] = [{
                        "type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": f'ReplicaSet "{self.name}-x" has timed out progressing.',
                    }]  # fmt: skip
            elif status["updatedReplicas"] < want:
                self._polls += 1
                status["updatedReplicas"] += 1
                status["replicas"] = want + 1 if status["updatedReplicas"] < want else want
                status["availableReplicas"] = want
                if status["updatedReplicas"] == want:
                    self._serving = self.image()
                    self.rollouts.append({"image": self.image(), "polls": self._polls})
                    status["conditions"] = [
                        {
                            "type": "Progressing",
                            "status": "True",
                            "reason": "NewReplicaSetAvailable",
                        }
                    ]
            return copy.deepcopy(self.dep)


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self) -> None:
            self._send(
                404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
            )

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != "Bearer test-token":
                self._send(401, {"kind": "Status", "status": "Failure", "code": 401})
            elif self.path.split("?")[0] == cluster.path:
                self._send(200, copy.deepcopy(cluster.dep))
            elif self.path.split("?")[0] == cluster.path + "/status":
                self._send(200, cluster.status_read())
            else:
                self._not_found()

        def do_PATCH(self) -> None:
            kind = self.headers.get("Content-Type", "")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.split("?")[0] != cluster.path:
                self._not_found()
            elif kind != "application/strategic-merge-patch+json":
                self._send(
                    415, {"kind": "Status", "status": "Failure", "message": kind, "code": 415}
                )
            else:
                self._send(200, cluster.patch(body))

    return Handler


@contextmanager
def fake_cluster(
    tmp: Path,
    image: str,
    namespace: str = "fraud",
    name: str = "fraud-api",
    replicas: int = 3,
    sidecar: bool = False,
) -> Iterator[tuple[FakeCluster, Path]]:
    """The fake API server on a free port, and a kubeconfig (token auth) pointing at it."""
    cluster = FakeCluster(namespace, name, "fraud-api", image, replicas)
    if sidecar:  # the decision shipper, as k8s/fraud-api runs it
        cluster.dep["spec"]["template"]["spec"]["initContainers"] = [
            {"name": "decision-shipper", "image": image, "restartPolicy": "Always"}
        ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp / "kubeconfig"
    url = f"http://127.0.0.1:{server.server_port}"
    context = {"cluster": "test", "user": "test", "namespace": namespace}
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": context}],
    }))  # fmt: skip
    try:
        yield cluster, kubeconfig
    finally:
        server.shutdown()
        server.server_close()
