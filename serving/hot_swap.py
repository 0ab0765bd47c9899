"""Hot swap: load another imported model beside the served one and switch to it atomically;
with several workers sharing Redis, the others follow the swap one of them announced, and the
live challenger one of them started, stopped or rolled back."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from serving import telemetry as tm
from serving.challenger import Challenger, RollbackPolicy
from serving.model_bundle import ModelBundle
from serving.scorer import FraudScorer, SwapError
from serving.state import StateUnavailable
from training.core import bento_model

log = logging.getLogger("bentoml.fraud_service")


class HotSwap:
    """Swaps the scorer's model to a Bento-store version, one swap at a time."""

    def __init__(self, scorer: FraudScorer, bento_model_name: str, threads: int) -> None:
        self.scorer = scorer
        self.bento_model_name = bento_model_name
        self.threads = threads
        self.lock = threading.Lock()
        self.following: str | None = None  # the announced version a follow was tried for
        self.challenger_lock = threading.Lock()
        self.challenger_said = 0  # the generation of the last challenger announcement seen
        self.challenger_following = False  # a thread is doing what was announced

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
        self,
        mode: str,
        version: str | None,
        share: float,
        policy: RollbackPolicy,
        announce: bool = True,
    ) -> dict[str, Any]:
        """Score beside the champion with a Bento-store model (``version``, default: the newest
        imported as challenger) in ``mode`` shadow or canary, or stop (``off``); with
        ``announce``, the other workers sharing Redis follow. LookupError: not in the store;
        SwapError: another feature configuration."""
        if mode == "off":
            previous = self.scorer.set_challenger(None)
            if announce:
                self._announce_challenger({"mode": "off"})
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
            said = {"mode": mode, "version": challenger.version, "share": share,
                    "policy": dataclasses.asdict(policy)}  # fmt: skip
            challenger.on_rollback = lambda reason: self._announce_challenger(
                {**said, "rolled_back": reason}
            )
            if announce:
                self._announce_challenger(said)
        log.info(
            "challenger v%s in %s mode beside champion v%s (share %g)",
            challenger.version, mode, served, share,
        )  # fmt: skip
        return {"mode": mode, "version": challenger.version, "share": share,
                "bento_model": str(model.tag), "champion_version": served}  # fmt: skip

    def _announce_challenger(self, said: dict[str, Any]) -> None:
        with self.challenger_lock:  # not followed back by this worker (0: not announced)
            generation = self.scorer.announce("challenger", json.dumps(said))
            self.challenger_said = max(self.challenger_said, generation)

    def follow_challenger(self) -> None:
        """Do what another worker announced of the live challenger (start, stop, a canary's
        roll-back): checked here, done in a thread, the newest announcement last."""
        if self.challenger_following or self._challenger_news() is None:
            return
        self.challenger_following = True
        threading.Thread(target=self._follow_challenger, daemon=True).start()

    def _challenger_news(self) -> tuple[int, dict[str, Any]] | None:
        """The challenger announcement this worker has not yet seen (None: none, or this
        worker is announcing one)."""
        if not self.challenger_lock.acquire(blocking=False):
            return None
        try:
            said = self.scorer.announced("challenger")
            if said is None or said[0] <= self.challenger_said:
                return None
            return said[0], json.loads(said[1])
        finally:
            self.challenger_lock.release()

    def _follow_challenger(self) -> None:
        try:
            while (news := self._challenger_news()) is not None:
                generation, wanted = news
                self.challenger_said = max(self.challenger_said, generation)
                current = self.scorer.challenger
                if wanted["mode"] == "off":
                    self.scorer.set_challenger(None)
                elif wanted.get("rolled_back"):
                    if current is not None and current.version == wanted["version"]:
                        current.roll_back(f"{wanted['rolled_back']} (in another worker)")
                else:
                    self.load_challenger(
                        wanted["mode"],
                        wanted["version"],
                        float(wanted["share"]),
                        RollbackPolicy(**wanted["policy"]),
                        announce=False,
                    )
        except (LookupError, SwapError, StateUnavailable) as exc:
            log.warning("could not follow the live challenger another worker set: %s", exc)
        finally:
            self.challenger_following = False

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
