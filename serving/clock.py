"""The service's clock: the time a transaction's ``tx_datetime`` is judged against, so that no
request can move the online state's time or expire its history.

- ``wall`` (production): the wall clock. A transaction is accepted from ``max_age`` before now
  to ``max_skew`` after it.
- ``stream`` (the demo, replays of simulated 2018 data): the latest transaction time accepted so
  far, starting at the end of the history shipped with the model. A transaction is accepted
  from ``max_age`` before it to ``max_step`` after it, so one request (or one adaptive batch)
  moves the clock by at most ``max_step``. With the Redis state the clock is shared through
  Redis, so a restarted or new worker resumes where the stream is, and a worker about to refuse
  a time as too far ahead first catches up with the furthest worker (one that got no traffic
  for a while would otherwise refuse every next transaction and, refusing, never move).

Requests are checked while they are validated (:func:`check`, called by the request models), so
a transaction outside the window gets a 400 naming ``tx_datetime`` before it is batched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from serving.state import StateUnavailable
from training.core.features import MS_PER_DAY

ClockMode = Literal["stream", "wall"]
CATCH_UP_EVERY_S = 0.25  # how often a worker refusing times as too far ahead reads the shared clock


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def span(ms: int) -> str:
    """``86_400_000`` -> ``"1 day"``; hours or minutes below a day."""
    if ms % MS_PER_DAY == 0:
        days = ms // MS_PER_DAY
        return f"{days} day{'s' if days != 1 else ''}"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    return f"{ms / 60_000:g} min"


class ServiceClock:
    """The accepted window of transaction times and, in stream mode, the clock it moves."""

    def __init__(
        self,
        mode: ClockMode,
        max_age_ms: int,
        max_ahead_ms: int,
        start_ms: int | None = None,
        shared: Callable[[int], int] | None = None,
    ) -> None:
        self.mode = mode
        self.max_age_ms = max_age_ms
        self.max_ahead_ms = max_ahead_ms
        self.shared = shared  # records this worker's clock, returns the furthest one
        self._stream_ms = start_ms if start_ms is not None else now_ms()
        self._lock = threading.Lock()
        self._catch_up_due = 0.0  # monotonic time of the next catch-up allowed on a refusal
        if shared is not None and mode == "stream":
            self._stream_ms = max(self._stream_ms, shared(self._stream_ms))

    def now_ms(self) -> int:
        return now_ms() if self.mode == "wall" else self._stream_ms

    def problem(self, t_ms: int) -> str | None:
        """Why ``t_ms`` is refused, or None when it is inside the window."""
        now = self.now_ms()
        if now - self.max_age_ms <= t_ms <= now + self.max_ahead_ms:
            return None
        if t_ms > now and self._catch_up():
            now = self.now_ms()
            if now - self.max_age_ms <= t_ms <= now + self.max_ahead_ms:
                return None
        what = "the wall clock" if self.mode == "wall" else "the stream's clock"
        where = "after" if t_ms > now else "before"
        return (
            f"{iso(t_ms)} is {span_of(abs(t_ms - now))} {where} the service clock "
            f"({what}, {iso(now)}): accepted from {span(self.max_age_ms)} before it to "
            f"{span(self.max_ahead_ms)} after it"
        )

    def advance(self, t_ms: int) -> None:
        """Stream mode: the clock follows the latest accepted transaction time."""
        if self.mode == "stream" and t_ms > self._stream_ms:
            with self._lock:
                if t_ms > self._stream_ms:
                    self._stream_ms = t_ms

    def _catch_up(self) -> bool:
        """Stream mode with a shared clock: follow the furthest worker before refusing a time
        as too far ahead, at most every CATCH_UP_EVERY_S (False: not due, or the state is
        down, when the refusal stands)."""
        if self.shared is None or self.mode != "stream":
            return False
        t = time.monotonic()
        if t < self._catch_up_due:
            return False
        self._catch_up_due = t + CATCH_UP_EVERY_S
        try:
            self.sync()
        except StateUnavailable:
            return False
        return True

    def sync(self) -> None:
        """Share this worker's stream clock and catch up with the others' (every few seconds)."""
        if self.shared is not None and self.mode == "stream":
            self.advance(self.shared(self._stream_ms))


def span_of(ms: int) -> str:
    """A rough, readable length: ``2.0 days``, ``5.3 h``, ``12 s``."""
    if ms >= MS_PER_DAY:
        return f"{ms / MS_PER_DAY:,.1f} days"
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:.1f} h"
    return f"{ms / 1000:,.0f} s"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_CLOCK: ServiceClock | None = None


def install(clock: ServiceClock | None) -> None:
    """Make ``clock`` the one request validation checks against (None: no check)."""
    global _CLOCK
    _CLOCK = clock


def check(t_ms: int) -> None:
    """ValueError (a 400 naming the field) when the installed clock refuses ``t_ms``."""
    if _CLOCK is not None:
        problem = _CLOCK.problem(t_ms)
        if problem is not None:
            raise ValueError(problem)
