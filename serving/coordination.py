"""Cross-worker coordination: what workers sharing one feature state tell each other.

- announcements on a topic ("model": a hot swap's version, "challenger": the live challenger),
  numbered by a generation counter, so a worker started later goes by its own start-up;
- the warm-up claim: the first worker warms a shared state from the model's history, the others
  wait for it; a marker tells when the store came back empty;
- the stream clock: the furthest event time any worker has seen.

:class:`Coordination` is the one-process case (the in-memory state): nobody to tell, every call
a no-op that answers as a lone worker would. :class:`RedisCoordination` is the shared case, beside
:class:`serving.redis_state.RedisFeatureState` (a :class:`SharedStore`), whose fault handling
it shares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class SharedStore(Protocol):
    """What coordination needs of the Redis feature state: its clients (fast, and long
    timeouts), its key prefix, and its fault guard (StateUnavailable on a failed call)."""

    r: Any
    bulk: Any
    prefix: str

    def guard(self, call: Callable[[], T]) -> T: ...


# KEYS: the topic's generation counter, the topic. ARGV: what is said. One step: two workers
# announcing at once cannot leave the older value under the newer generation.
ANNOUNCE = """
local g = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], g .. ' ' .. ARGV[1])
return g
"""

# KEYS: the clock key. ARGV: a worker's stream clock (ms). Keeps and returns the larger.
MAX_CLOCK = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) >= tonumber(ARGV[1]) then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class Coordination:
    """One worker alone: nothing to announce or follow, it warms its own state."""

    shared = False

    def announce(self, topic: str, value: str) -> int:
        """Tell the other workers ``value`` on ``topic``; the announcement's generation (0:
        nobody to tell)."""
        return 0

    def generation(self, topic: str) -> int:
        """How many announcements ``topic`` has had."""
        return 0

    def announced(self, topic: str, after: int) -> tuple[int, str] | None:
        """The latest announcement on ``topic`` (generation, value) if it came after
        generation ``after``."""
        return None

    def claim_warmup(self, token: str, wait_s: float = 600.0) -> int | None:
        """None when this process should warm the state from history ``token`` (then call
        :meth:`warmup_done`); else the transactions another process warmed it with."""
        return None

    def warmup_done(self, token: str, transactions: int) -> None:
        """Mark the warm-up of history ``token`` done."""

    def warmed(self, token: str) -> bool:
        """Whether the warm-up of history ``token`` is complete in the store (False: it came
        back empty)."""
        return True

    def stream_clock(self, t_ms: int) -> int:
        """Record this worker's stream clock; the furthest any worker has recorded."""
        return t_ms


class RedisCoordination(Coordination):
    """Coordination through the Redis that holds the shared feature state (same prefix, same
    fault handling: a failed call raises StateUnavailable)."""

    shared = True

    def __init__(self, state: SharedStore) -> None:
        self.state = state
        self.prefix = state.prefix
        self._announce = state.r.register_script(ANNOUNCE)
        self._max_clock = state.r.register_script(MAX_CLOCK)

    def announce(self, topic: str, value: str) -> int:
        keys = [f"{self.prefix}:{topic}:generation", f"{self.prefix}:{topic}"]
        st = self.state
        return int(st.guard(lambda: self._announce(keys=keys, args=[value], client=st.r)))

    def generation(self, topic: str) -> int:
        key = f"{self.prefix}:{topic}:generation"
        return int(self.state.guard(lambda: self.state.r.get(key)) or 0)

    def announced(self, topic: str, after: int) -> tuple[int, str] | None:
        """A counter, not a clock: machines need not agree on the time."""
        value = self.state.guard(lambda: self.state.r.get(f"{self.prefix}:{topic}"))
        if value is None:
            return None
        generation, _, said = (value.decode() if isinstance(value, bytes) else value).partition(" ")
        return (int(generation), said) if int(generation) > after else None

    def claim_warmup(self, token: str, wait_s: float = 600.0) -> int | None:
        """Waits while another process is at it; takes over when that one died."""
        key, bulk = f"{self.prefix}:warm:{token}", self.state.bulk
        if bulk.set(key, "running", nx=True, ex=int(wait_s)):
            return None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            value = bulk.get(key)
            if value is None:  # the warming process died: take over
                return self.claim_warmup(token, wait_s)
            if value != b"running":
                return int(value)
            time.sleep(0.2)
        raise TimeoutError(f"feature state: another worker has been warming it for {wait_s}s")

    def warmup_done(self, token: str, transactions: int) -> None:
        """No expiry: the marker's absence means Redis lost the state."""
        self.state.bulk.set(f"{self.prefix}:warm:{token}", str(transactions))

    def warmed(self, token: str) -> bool:
        """False also while another worker warms it again (marker "running")."""
        value = self.state.guard(lambda: self.state.r.get(f"{self.prefix}:warm:{token}"))
        return value is not None and value != b"running"

    def stream_clock(self, t_ms: int) -> int:
        key = f"{self.prefix}:clock"
        return int(self.state.guard(lambda: self._max_clock(keys=[key], args=[t_ms])))
