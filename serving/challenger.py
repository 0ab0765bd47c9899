"""Live challengers: the registry's ``challenger`` scored on live traffic beside the champion.

- **shadow**: it scores every batch (or ``FRAUD_SHADOW_SHARE`` of them) too; every answer stays
  the champion's.
- **canary**: a stable share of customers (CRC-32 of ``customer_id``) is answered by it; the
  champion scores those transactions too, as their shadow.

For every transaction both models scored (a bounded memory per worker), labels arriving on
/feedback count live precision and recall per model, and per arm in canary mode; the canary
rolls itself back when it does worse than the champion by a set margin (errors, model time or
live precision). Promoting it is a hot swap to its version (the challenger then ends).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving import telemetry as tm
from serving.model_bundle import ModelBundle
from serving.online_features import TxRecord

log = logging.getLogger("bentoml.fraud_service.challenger")
REMEMBERED = 200_000  # transactions whose two decisions a worker keeps for live labels
CHAMPION, CANARY = "champion", "canary"  # the arms
MIN_ATTEMPTS = 100  # canary transactions before its error rate can roll it back
MIN_BATCHES = 200  # batches of each arm before model time can roll it back


@dataclass
class Confusion:
    """Decisions against labels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, flagged: bool, fraud: bool) -> str:
        kind = ("tp" if fraud else "fp") if flagged else ("fn" if fraud else "tn")
        setattr(self, kind, getattr(self, kind) + 1)
        return kind

    @property
    def alerts(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float | None:
        return self.tp / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        frauds = self.tp + self.fn
        return self.tp / frauds if frauds else None


@dataclass
class ArmStats:
    """What one arm of a canary answered, how it failed, its model time and its labels."""

    transactions: int = 0
    attempted: int = 0  # transactions its model was asked to score
    errors: int = 0  # of those, the ones it failed (answered by the champion instead)
    batches: int = 0
    seconds: float = 0.0  # model time, summed over batches
    labels: Confusion = field(default_factory=Confusion)

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempted if self.attempted else 0.0

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.batches if self.batches else 0.0


@dataclass(frozen=True)
class RollbackPolicy:
    """When a canary goes back: its error rate above the champion's by ``error_margin``, its
    model time a batch above ``latency_ratio`` times the champion's (on its own, smaller share
    of each batch: a lenient comparison), or its live precision below the champion's by
    ``precision_margin`` once each arm has ``min_labels`` labelled alerts."""

    min_labels: int = 50
    precision_margin: float = 0.1
    error_margin: float = 0.01
    latency_ratio: float = 2.0

    @classmethod
    def of(cls, settings: Any) -> RollbackPolicy:
        """The policy the settings (FRAUD_CANARY_*) set."""
        return cls(
            settings.canary_min_labels,
            settings.canary_precision_margin,
            settings.canary_error_margin,
            settings.canary_latency_ratio,
        )

    def verdict(self, champion: ArmStats, canary: ArmStats) -> str | None:
        """Why the canary must roll back; None while it holds up."""
        if (
            canary.attempted >= MIN_ATTEMPTS
            and canary.error_rate > champion.error_rate + self.error_margin
        ):
            return (
                f"error rate {canary.error_rate:.3f} against the champion's "
                f"{champion.error_rate:.3f} (margin {self.error_margin})"
            )
        if (
            min(canary.batches, champion.batches) >= MIN_BATCHES
            and canary.mean_seconds > champion.mean_seconds * self.latency_ratio
        ):
            return (
                f"model time {canary.mean_seconds * 1e6:.0f} µs a batch against the champion's "
                f"{champion.mean_seconds * 1e6:.0f} µs (at most {self.latency_ratio}x)"
            )
        a, b = canary.labels, champion.labels
        if min(a.alerts, b.alerts) >= self.min_labels:
            pa, pb = a.precision or 0.0, b.precision or 0.0
            if pa < pb - self.precision_margin:
                return (
                    f"live precision {pa:.3f} on {a.alerts} labelled alerts against the "
                    f"champion's {pb:.3f} on {b.alerts} (margin {self.precision_margin})"
                )
        return None


@dataclass
class Challenged:
    """A batch's answers once the challenger took its part, and the other model's score of each
    transaction (None where only one model scored it)."""

    proba: np.ndarray
    flagged: np.ndarray
    arms: list[str]
    versions: list[str]
    thresholds: list[float]
    other_versions: list[str | None]
    other_proba: list[float | None]
    other_flagged: list[bool | None]

    @property
    def canary_rows(self) -> list[int]:
        return [i for i, arm in enumerate(self.arms) if arm == CANARY]


def in_canary(customer_id: str, share: float) -> bool:
    """Whether a customer is in the canary's share: stable across workers and restarts."""
    return zlib.crc32(customer_id.encode()) < share * 2**32


class Challenger:
    """One challenger model in shadow or canary mode, with its live figures."""

    def __init__(
        self,
        bundle: ModelBundle,
        mode: str,
        share: float,
        policy: RollbackPolicy,
        champion_version: str,
    ) -> None:
        if mode not in ("shadow", "canary"):
            raise ValueError(f"challenger mode must be shadow or canary, not {mode!r}")
        self.bundle = bundle
        self.mode = mode
        self.share = share
        self.policy = policy
        self.version = bundle.version
        self.champion_version = champion_version
        self.threshold = bundle.threshold
        self.columns = bundle.columns
        self.started = time.time()
        self.arms = {CHAMPION: ArmStats(), CANARY: ArmStats()}
        self.models = {"champion": Confusion(), "challenger": Confusion()}
        self.agreement = {"both_fraud": 0, "both_genuine": 0, "champion_only": 0,
                          "challenger_only": 0}  # fmt: skip
        self.rolled_back: str | None = None
        self.seen: OrderedDict[str, tuple[str, bool, bool]] = OrderedDict()
        self.lock = threading.Lock()  # /feedback runs in a thread, scoring on the event loop
        self.rng = random.Random()
        self.on_rollback: Callable[[str], None] | None = None  # told once, after a roll-back
        self._scores = {role: tm.MODEL_SCORES.labels(role) for role in ("champion", "challenger")}
        tm.publish_challenger(self.version, mode, share, active=True)

    @property
    def active(self) -> bool:
        return self.rolled_back is None

    def predict(self, cols: Mapping[str, Any]) -> np.ndarray:
        return self.bundle.predict_proba(cols)

    def take_part(
        self,
        batch: Sequence[TxRecord],
        cols: Mapping[str, Any],
        proba: np.ndarray,
        flagged: np.ndarray,
        champion_seconds: float,
        champion_threshold: float,
    ) -> Challenged | None:
        """Score the batch's share (all of it in shadow); None when the challenger has no part
        in this batch. Never raises: a failing challenger leaves the champion's answers."""
        if not self.active:
            return None
        n = len(batch)
        champ = self.arms[CHAMPION]
        champ.batches += 1
        champ.seconds += champion_seconds
        champ.attempted += n
        if self.mode == "shadow":
            champ.transactions += n
            tm.ARM_TRANSACTIONS.labels(CHAMPION).inc(n)
            if self.share < 1.0 and self.rng.random() >= self.share:
                return None
            rows = np.arange(n)
        else:
            mask = np.fromiter((in_canary(r.customer_id, self.share) for r in batch), bool, n)
            rows = np.flatnonzero(mask)
            kept = np.flatnonzero(~mask)
            champ.transactions += len(kept)
            tm.ARM_TRANSACTIONS.labels(CHAMPION).inc(len(kept))
            self._remember_champion([batch[i].transaction_id for i in kept.tolist()], flagged[kept])
        if not len(rows):
            return None
        t0 = time.perf_counter()
        try:
            part = {c: np.asarray(cols[c])[rows] for c in self.columns}
            theirs = self.predict(part)
        except Exception as exc:  # the champion's answers stand
            self._failed(len(rows), exc)
            return None
        seconds = time.perf_counter() - t0
        mine = theirs >= self.threshold
        ids = [batch[i].transaction_id for i in rows.tolist()]
        champ_p, champ_f = proba[rows], flagged[rows]
        self._observe(ids, champ_p, champ_f, theirs, mine)
        answer_p, answer_f = proba.copy(), flagged.copy()
        arms = [CHAMPION] * n
        versions = [self.champion_version] * n
        thresholds = [champion_threshold] * n
        other_v: list[str | None] = [None] * n
        other_p: list[float | None] = [None] * n
        other_f: list[bool | None] = [None] * n
        if self.mode == "shadow":
            for k, i in enumerate(rows.tolist()):
                other_v[i], other_p[i], other_f[i] = self.version, float(theirs[k]), bool(mine[k])
        else:
            arm = self.arms[CANARY]
            arm.batches += 1
            arm.seconds += seconds
            arm.transactions += len(rows)
            arm.attempted += len(rows)
            tm.ARM_TRANSACTIONS.labels(CANARY).inc(len(rows))
            answer_p[rows], answer_f[rows] = theirs, mine
            for k, i in enumerate(rows.tolist()):
                arms[i], versions[i], thresholds[i] = CANARY, self.version, self.threshold
                other_v[i] = self.champion_version
                other_p[i], other_f[i] = float(champ_p[k]), bool(champ_f[k])
        tm.CHALLENGER_SECONDS.observe(seconds)
        if self.mode == "canary" and champ.batches % 100 == 0:  # errors and model time
            self.check()
        return Challenged(answer_p, answer_f, arms, versions, thresholds, other_v, other_p, other_f)

    def _failed(self, rows: int, exc: Exception) -> None:
        tm.CHALLENGER_ERRORS.inc(rows)
        log.warning("challenger v%s failed on %d transactions: %s", self.version, rows, exc)
        if self.mode == "canary":
            arm = self.arms[CANARY]
            arm.attempted += rows
            arm.errors += rows
            self.check()

    def _observe(
        self,
        ids: list[str],
        champ_p: np.ndarray,
        champ_f: np.ndarray,
        theirs: np.ndarray,
        mine: np.ndarray,
    ) -> None:
        tm.observe_many(self._scores["champion"], champ_p)
        tm.observe_many(self._scores["challenger"], theirs)
        a, b = champ_f.astype(bool), mine.astype(bool)
        counts = {
            "both_fraud": int(np.sum(a & b)),
            "both_genuine": int(np.sum(~a & ~b)),
            "champion_only": int(np.sum(a & ~b)),
            "challenger_only": int(np.sum(~a & b)),
        }
        arm = CANARY if self.mode == "canary" else CHAMPION
        with self.lock:
            for outcome, k in counts.items():
                if k:
                    self.agreement[outcome] += k
                    tm.AGREEMENT.labels(outcome).inc(k)
            seen = self.seen
            for tx, fa, fb in zip(ids, a.tolist(), b.tolist(), strict=True):
                seen[tx] = (arm, fa, fb)
            while len(seen) > REMEMBERED:
                seen.popitem(last=False)

    def _remember_champion(self, ids: list[str], flagged: np.ndarray) -> None:
        """Canary mode: the champion arm's answers, for its live precision (the arms'
        comparison)."""
        with self.lock:
            seen = self.seen
            for tx, f in zip(ids, flagged.tolist(), strict=True):
                seen[tx] = (CHAMPION, bool(f), False)
            while len(seen) > REMEMBERED:
                seen.popitem(last=False)

    def label(self, labels: Mapping[str, int]) -> None:
        """Labels from /feedback: live confusion per model and per arm; may roll back."""
        with self.lock:
            for tx, fraud in labels.items():
                item = self.seen.get(tx)
                if item is None:
                    continue
                arm, champ_flag, their_flag = item
                if self.mode == "canary" and arm == CHAMPION:  # the challenger never scored it
                    kind = self.arms[CHAMPION].labels.add(champ_flag, bool(fraud))
                    tm.ARM_LABELS.labels(CHAMPION, kind).inc()
                    continue
                for role, flag in (("champion", champ_flag), ("challenger", their_flag)):
                    kind = self.models[role].add(flag, bool(fraud))
                    tm.MODEL_LABELS.labels(role, kind).inc()
                if self.mode == "canary":
                    kind = self.arms[CANARY].labels.add(their_flag, bool(fraud))
                    tm.ARM_LABELS.labels(CANARY, kind).inc()
        if self.mode == "canary":
            self.check()

    def check(self) -> str | None:
        """Roll the canary back when the policy says so (once); the reason."""
        if self.mode != "canary" or self.rolled_back is not None:
            return self.rolled_back
        reason = self.policy.verdict(self.arms[CHAMPION], self.arms[CANARY])
        if reason is not None and self.roll_back(reason):
            tm.CANARY_ROLLBACKS.inc()
            if self.on_rollback is not None:  # the other workers roll it back too
                self.on_rollback(reason)
        return self.rolled_back

    def roll_back(self, reason: str) -> bool:
        """Answer every customer with the champion from now on (``reason``: why); False when
        it was rolled back already."""
        with self.lock:
            if self.rolled_back is not None:
                return False
            self.rolled_back = reason
        tm.publish_challenger(self.version, self.mode, self.share, active=False)
        log.warning("canary v%s rolled back: %s", self.version, reason)
        return True

    def retire(self) -> None:
        tm.publish_challenger(self.version, self.mode, self.share, active=False)

    def health(self) -> dict[str, Any]:
        def conf(c: Confusion) -> dict[str, Any]:
            return {**c.__dict__, "precision": c.precision, "recall": c.recall}

        out: dict[str, Any] = {
            "version": self.version,
            "mode": self.mode,
            "share": self.share,
            "active": self.active,
            "rolled_back": self.rolled_back,
            "threshold": self.threshold,
            "agreement": dict(self.agreement),
            "live": {role: conf(c) for role, c in self.models.items()},
            "since": round(time.time() - self.started, 1),
        }
        if self.mode == "canary":
            out["arms"] = {
                name: {
                    "transactions": a.transactions,
                    "errors": a.errors,
                    "mean_model_seconds": a.mean_seconds,
                    "live": conf(a.labels),
                }
                for name, a in self.arms.items()
            }
        return out
