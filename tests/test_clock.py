"""The service clock: transactions outside [clock - retention, clock + step] are refused by
request validation (a 400 naming tx_datetime), the stream clock moves by at most one step a
request, and with the Redis state the workers share it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from serving import clock
from serving.api_models import Transaction, epoch_ms
from serving.clock import ServiceClock
from training.core.features import MS_PER_DAY

START = datetime(2018, 7, 9, 23, 0, tzinfo=UTC)  # where a model's history ends
DAY = timedelta(days=1)


def body(at: datetime | str, i: int = 1) -> dict:
    return {
        "transaction_id": f"c-{i}",
        "tx_datetime": at if isinstance(at, str) else at.isoformat(),
        "customer_id": 1,
        "terminal_id": 2,
        "tx_amount": 10.0,
    }


@pytest.fixture
def stream() -> Iterator[ServiceClock]:
    c = ServiceClock("stream", 30 * MS_PER_DAY, MS_PER_DAY, start_ms=epoch_ms(START))
    clock.install(c)
    yield c
    clock.install(None)


def refused(at: datetime | str) -> str:
    with pytest.raises(ValidationError) as exc:
        Transaction.model_validate(body(at))
    (error,) = exc.value.errors()
    assert error["loc"] == ("tx_datetime",)
    return str(error["msg"])


def test_far_future_and_far_past_times_are_refused_naming_the_field(stream) -> None:
    msg = refused("9999-12-31T00:00:00Z")
    assert "after the service clock" in msg and "2018-07-09T23:00:00Z" in msg
    assert "30 days before it to 1 day after it" in msg
    assert "before the service clock" in refused("1970-01-01T00:00:00Z")
    assert "2.0 days after" in refused(START + 2 * DAY)  # a 2-day jump
    assert "31.0 days before" in refused(START - 31 * DAY)
    assert stream.now_ms() == epoch_ms(START)  # nothing refused moved the clock


def test_the_stream_clock_follows_a_legitimate_stream_one_step_at_a_time(stream) -> None:
    midnight = datetime(2018, 7, 10, 0, 0, 30, tzinfo=UTC)  # a day change in the stream
    Transaction.model_validate(body(midnight))
    stream.advance(epoch_ms(midnight))
    assert stream.now_ms() == epoch_ms(midnight)
    for day in range(1, 5):  # day after day: each inside the step from the last
        at = midnight + day * DAY - timedelta(minutes=5)
        Transaction.model_validate(body(at))
        stream.advance(epoch_ms(at))
    Transaction.model_validate(body(midnight))  # late, but inside the retention
    stream.advance(epoch_ms(midnight))  # an older time never moves it back
    assert stream.now_ms() == epoch_ms(midnight + 4 * DAY - timedelta(minutes=5))


def test_the_wall_clock_allows_a_small_skew_only() -> None:
    c = ServiceClock("wall", 30 * MS_PER_DAY, 300_000)
    clock.install(c)
    try:
        now = datetime.now(UTC)
        Transaction.model_validate(body(now - DAY))
        Transaction.model_validate(body(now + timedelta(minutes=4)))
        assert "the wall clock" in refused(now + timedelta(minutes=10))
        assert "before the service clock" in refused(START)  # 2018 is long gone
        c.advance(epoch_ms(now + DAY))  # the wall clock is not moved by transactions
        assert abs(c.now_ms() - epoch_ms(datetime.now(UTC))) < 5_000
    finally:
        clock.install(None)


def test_the_test_sample_skips_the_clock(stream) -> None:
    """/test's built-in sample is scored whatever the clock: the same far-off time that a
    client is refused passes with the ``any_time`` context, and keeps its own time."""
    assert "after the service clock" in refused("2030-01-01T00:00:00Z")
    tx = Transaction.model_validate(body("2030-01-01T00:00:00Z"), context={"any_time": True})
    assert tx.tx_datetime == datetime(2030, 1, 1, tzinfo=UTC)
    assert stream.now_ms() == epoch_ms(START)  # nor did it move the clock
