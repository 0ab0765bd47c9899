"""``bentoml serve`` as this service runs it: ``python -m serving.supervisor [--no-shipper]
<bentoml serve arguments>``, what `fraudops serve`, Compose and Kubernetes start.

Two changes to BentoML's process supervisor (circus), made before it starts:

- **A dead worker is restarted in place**, in a container too. BentoML turns circus's respawn
  off inside containers (``BENTOML_CONTAINERIZED``), leaving the orchestrator to restart what
  dies; but the container's main process (circusd) lives on, so neither Compose's restart
  policy nor Kubernetes ever fires: the container holds its port and serves nothing. Restarting
  the container instead would drop the surviving workers' requests and repeat the whole start
  (model load, warm-up); restarting the one worker costs neither. circus checks its processes
  every CHECK_DELAY_S (BentoML: 10 s). If circus itself dies, the container exits and the
  orchestrator takes over.
- **The decision shipper runs beside the workers** (:mod:`serving.shipper`) as one more circus
  process, restarted the same way, and its counters join the workers' /metrics. ``--no-shipper``
  when it runs elsewhere (Compose's ``fraud-shipper``, the Kubernetes sidecar) or when the log is
  off or shipped by the workers (FRAUD_DECISION_LOG, FRAUD_SHIP_IN_WORKERS).
"""

from __future__ import annotations

import sys
from typing import Any

CHECK_DELAY_S = 1.0  # between circus's checks of its processes (BentoML's default: 10 s)
SHIPPER = "decision-shipper"


def supervise(shipper: bool) -> None:
    """Make BentoML's circus respawn dead processes everywhere, check them every
    CHECK_DELAY_S and (``shipper``) run the decision shipper as a process of its own."""
    import bentoml.serving as serving
    from bentoml._internal.utils import circus

    make_watcher, make_arbiter = serving.create_watcher, circus.create_standalone_arbiter

    def create_watcher(*args: Any, **kwargs: Any) -> Any:
        watcher = make_watcher(*args, **kwargs)
        watcher.respawn = True
        return watcher

    def create_arbiter(watchers: list[Any], **kwargs: Any) -> Any:
        kwargs.setdefault("check_delay", CHECK_DELAY_S)
        service = next((w for w in watchers if w.name == "service"), None)
        if shipper and service is not None:
            watchers.append(
                create_watcher(
                    name=SHIPPER,
                    args=["-m", "serving.shipper"],
                    use_sockets=False,
                    working_dir=service.working_dir,
                    numprocesses=1,
                    env=dict(service.env or {}),
                )
            )
        return make_arbiter(watchers, **kwargs)

    serving.create_watcher = create_watcher
    circus.create_standalone_arbiter = create_arbiter


def wants_shipper(argv: list[str]) -> bool:
    """Whether this service ships its log from a process beside the workers."""
    from training.core.config import get_settings

    settings = get_settings()
    return "--no-shipper" not in argv and settings.decision_log and not settings.ship_in_workers


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    supervise(shipper=wants_shipper(args))
    from bentoml_cli.cli import cli

    cli(["serve", *[a for a in args if a != "--no-shipper"]], prog_name="bentoml")


if __name__ == "__main__":
    main()
