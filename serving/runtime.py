"""The serving runtime of one worker, built from the settings and a Bento model directory: the
scorer over its feature state, the service clock, the decision log, hot swap, reason codes and the
live challenger; and its upkeep (state health, following other workers, gauges).

``service.py`` builds one per worker and wires its routes to it; tests build it in process,
without BentoML (:func:`build`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import telemetry as tm
from serving.challenger import RollbackPolicy
from serving.clock import ServiceClock
from serving.decision_log import DecisionLog
from serving.decision_rules import DecisionRules
from serving.hot_swap import HotSwap
from serving.model_bundle import ModelBundle, feature_config
from serving.online_features import new_state
from serving.reason_codes import ReasonCodes
from serving.redis_state import RedisFeatureState
from serving.scorer import FraudScorer, SwapError
from serving.state import FeatureState, StateUnavailable
from training.core.config import Settings
from training.core.features import FeatureConfig

log = logging.getLogger("bentoml.fraud_service")
UPKEEP_EVERY_S = 2.0  # state health, following other workers, gauges: at most this often


def state_for(settings: Settings, cfg: FeatureConfig) -> FeatureState:
    """The online feature state the settings ask for (Redis: connected and checked)."""
    if settings.state_backend == "redis":
        return RedisFeatureState.from_url(
            settings.redis_url,
            cfg.customer_retention_ms,
            cfg.terminal_retention_ms,
            settings.state_prefix,
            timeout_s=settings.redis_timeout_ms / 1000,
        )
    return new_state(cfg)


def clock_for(settings: Settings, scorer: FraudScorer) -> ServiceClock:
    """The service clock the settings ask for; a stream clock starts where the model's
    history ends (or, with a shared state, where the furthest worker's clock is)."""
    return ServiceClock(
        settings.clock,
        max_age_ms=min(scorer.cfg.customer_retention_ms, scorer.cfg.terminal_retention_ms),
        max_ahead_ms=1000
        * (settings.clock_max_step_s if settings.clock == "stream" else settings.clock_max_skew_s),
        start_ms=scorer.bundle.history_end_ms(),
        shared=scorer.features.state.coordination.stream_clock,
    )


@dataclass
class Runtime:
    """One worker's collaborators; the routes of ``service.py`` call into them."""

    settings: Settings
    scorer: FraudScorer
    clock: ServiceClock
    decisions: DecisionLog | None
    hot_swap: HotSwap
    reason_codes: ReasonCodes
    rules: DecisionRules
    warmed: int  # transactions the state was warmed with from the model's history
    challenger_error: str | None = None  # why the last challenger could not start
    upkeep_due: float = 0.0  # perf_counter time of the next upkeep
    rules_said: int = 0  # the generation of the last rules announcement seen

    def rules_changed(self) -> None:
        """This worker changed the rules or a list in the store: the others read it again."""
        self.rules_said = max(self.rules_said, self.scorer.announce("rules", "changed"))

    def set_challenger(
        self, mode: str, version: str | None, share: float | None, announce: bool = True
    ) -> dict[str, Any]:
        """Start, change or stop the live challenger (``announce``: in every worker sharing
        the state); a failure is kept for /health (the champion serves on). LookupError: no
        such model; SwapError: another feature configuration."""
        s = self.settings
        share = share or (s.shadow_share if mode == "shadow" else s.canary_share)
        try:
            out = self.hot_swap.load_challenger(
                mode, version, share, RollbackPolicy.of(s), announce
            )
        except (LookupError, SwapError) as exc:
            self.challenger_error = str(exc)
            log.warning("no live challenger: %s", exc)
            raise
        self.challenger_error = None
        return out

    def follow_other_workers(self) -> None:
        """What the workers sharing the state announced: a hot swap, a live challenger (both
        done in a thread), and the furthest stream clock. StateUnavailable: the state is down."""
        self.hot_swap.follow_announced()
        self.hot_swap.follow_challenger()
        said = self.scorer.announced("rules")
        if said is not None and said[0] > self.rules_said:  # read in the rules' own thread
            self.rules_said = said[0]
            self.rules.poke()
        self.clock.sync()

    def upkeep(self) -> None:
        """Every UPKEEP_EVERY_S from the request path (a few ms at most): the state store's
        health, then following the other workers, then the state-size and drift gauges."""
        self.upkeep_due = time.perf_counter() + UPKEEP_EVERY_S
        problem = self.scorer.check_state()
        tm.STATE_UP.set(problem is None)
        tm.STATE_REWARMING.set(self.scorer.warmup.rewarming)
        if self.decisions is not None:
            tm.LOG_BACKLOG.set(self.decisions.backlog_bytes())
            tm.LOG_SHIP_AGE.set(self.decisions.delivery_age_s())
        if problem is not None:
            return
        try:
            self.follow_other_workers()
            stats = self.scorer.features.state.stats()
        except StateUnavailable:
            return
        window = self.scorer.drift
        tm.publish_state(
            stats,
            self.scorer.drift_psi(self.settings.drift_min_transactions),
            window.filled if window else 0,
        )


def build(settings: Settings, model_path: Path, metadata: dict[str, Any]) -> Runtime:
    """Load the model, connect and warm the state (history, then the decision log since),
    start the clock where the stream is, and the challenger the settings ask for."""
    bundle = ModelBundle.load(model_path, metadata, settings.model_thread_count())
    scorer = FraudScorer(
        bundle,
        state=state_for(settings, feature_config(bundle.info)),
        drift_window=settings.drift_window,
    )
    decisions = (
        DecisionLog(
            settings.journal_dir, settings.decision_db_url, scorer.columns, settings.ship_in_workers
        )
        if settings.decision_log
        else None
    )
    if decisions is not None:  # after each fresh warm-up: the log since the history
        scorer.warmup.replay_source = decisions.logged_since
    warmed = scorer.warm()
    clock = clock_for(settings, scorer)
    if scorer.warmup.replayed_until_ms:
        clock.advance(scorer.warmup.replayed_until_ms)
    scorer.warmup.on_rewarmed = tm.rewarmed
    tm.publish_model(bundle.metadata, scorer.model_version, scorer.threshold)
    rules = DecisionRules(
        settings.decision_db_url if settings.decision_log else None,
        settings.rules_refresh_s,
        known=scorer.columns,
    )
    rules.start()
    runtime = Runtime(
        settings=settings,
        scorer=scorer,
        clock=clock,
        decisions=decisions,
        hot_swap=HotSwap(scorer, settings.bento_model, settings.model_thread_count()),
        reason_codes=ReasonCodes(scorer, settings.bento_model, decisions),
        rules=rules,
        warmed=warmed,
    )
    if settings.challenger_mode != "off":  # a missing challenger: the champion serves on
        with contextlib.suppress(LookupError, SwapError):
            runtime.set_challenger(
                settings.challenger_mode,
                settings.challenger_version,
                None,
                announce=False,  # every worker starts it from the same settings
            )
    return runtime
