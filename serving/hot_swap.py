"""Hot swap: load another imported model beside the served one and switch to it atomically;
with several workers sharing Redis, the others follow the swap one of them announced."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from serving import telemetry as tm
from serving.challenger import Challenger, RollbackPolicy
from serving.scorer import FraudScorer, ModelBundle, SwapError
from training import bento_model

log = logging.getLogger("bentoml.fraud_service")


class HotSwap:
    """Swaps the scorer's model to a Bento-store version, one swap at a time."""

    def __init__(self, scorer: FraudScorer, bento_model_name: str, threads: int) -> None:
        self.scorer = scorer
        self.bento_model_name = bento_model_name
        self.threads = threads
        self.lock = threading.Lock()
        self.following: str | None = None  # the announced version a follow was tried for

    def swap_to(self, version: str | None) -> dict[str, Any]:
        """Load the Bento-store model of MLflow ``version`` (default: the latest import) and
        serve it from the next batch on, and after a restart (pinned). LookupError: not in the
        store; SwapError: it cannot take over in place (another feature configuration)."""
        t0 = time.perf_counter()
        with self.lock:
            try:
                model = bento_model.find(self.bento_model_name, version)
                bundle = ModelBundle.load(Path(model.path), model.info.metadata, self.threads)
                old_meta = self.scorer.bundle.metadata
                previous = self.scorer.swap(bundle)
            except (LookupError, SwapError):
                tm.MODEL_SWAPS.labels("failed").inc()
                raise
            bento_model.pin(self.bento_model_name, str(model.tag))  # a restart serves it too
            tm.retire_model(old_meta, previous)
            tm.publish_model(bundle.metadata, self.scorer.model_version, self.scorer.threshold)
            tm.MODEL_SWAPS.labels("ok").inc()
        seconds = time.perf_counter() - t0
        log.info("swapped model %s -> %s in %.2fs", previous, self.scorer.model_version, seconds)
        return {
            "model_version": self.scorer.model_version,
            "previous_version": previous,
            "bento_model": str(model.tag),
            "swap_seconds": round(seconds, 3),
        }

    def load_challenger(
        self, mode: str, version: str | None, share: float, policy: RollbackPolicy
    ) -> dict[str, Any]:
        """Score beside the champion with a Bento-store model (``version``, default: the newest
        imported as challenger) in ``mode`` shadow or canary, or stop (``off``). LookupError:
        not in the store; SwapError: another feature configuration."""
        if mode == "off":
            previous = self.scorer.set_challenger(None)
            return {"mode": "off", "previous_version": previous.version if previous else None}
        with self.lock:
            served = self.scorer.model_version
            model = (
                bento_model.find(self.bento_model_name, version)
                if version
                else bento_model.find_challenger(self.bento_model_name, served)
            )
            bundle = ModelBundle.load(Path(model.path), model.info.metadata, self.threads)
            challenger = Challenger(bundle, mode, share, policy, served)
            try:
                self.scorer.set_challenger(challenger)
            except SwapError:
                challenger.retire()
                raise
        log.info(
            "challenger v%s in %s mode beside champion v%s (share %g)",
            challenger.version, mode, served, share,
        )  # fmt: skip
        return {"mode": mode, "version": challenger.version, "share": share,
                "bento_model": str(model.tag), "champion_version": served}  # fmt: skip

    def follow_announced(self) -> None:
        """Start following (in a thread, once per announcement) a swap another worker made."""
        wanted = self.scorer.announced_model()
        if wanted and wanted not in (self.scorer.model_version, self.following):
            self.following = wanted
            threading.Thread(target=self._follow, args=(wanted,), daemon=True).start()

    def _follow(self, version: str) -> None:
        try:
            self.swap_to(version)
        except (LookupError, SwapError) as exc:
            log.warning("could not follow the hot swap to model %s: %s", version, exc)
