"""Choosing the online state's backend: the settings refuse several workers without the shared
state, and an unreachable Redis is named at start-up (no Redis needed for either)."""

from __future__ import annotations

import pytest

from serving.redis_state import RedisFeatureState


def test_more_workers_need_the_shared_state() -> None:
    from pydantic import ValidationError

    from training.core.config import Settings

    with pytest.raises(ValidationError, match="FRAUD_STATE_BACKEND=redis"):
        Settings(workers=2)
    assert Settings(workers=2, state_backend="redis").workers == 2


def test_an_unreachable_redis_is_named_at_start_up() -> None:
    with pytest.raises(ConnectionError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        RedisFeatureState.from_url("redis://127.0.0.1:1/0", 1, 1, "x")
