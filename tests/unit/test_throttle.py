"""The token bucket behind `[offsite] max_upload_rate`, on an injected clock: no
wall-clock timing anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyops.throttle import Throttle, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def test_unlimited_never_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0, clock=clock)
    assert all(bucket.reserve(1 << 30) == 0 for _ in range(10))


def test_a_full_bucket_lets_one_burst_through_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)  # burst: one second's worth
    assert bucket.reserve(1000) == 0
    assert bucket.reserve(500) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.reserve(500) == pytest.approx(0.5)  # the debt was paid, this one waits


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=200, clock=clock)
    bucket.reserve(200)
    clock.now += 3600  # an hour idle: still only 200 bytes of credit
    assert bucket.reserve(200) == 0
    assert bucket.reserve(100) == pytest.approx(1.0)


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1)


@given(
    rate=st.integers(1, 50_000_000),
    sizes=st.lists(st.integers(1, 16 << 20), min_size=1, max_size=200),
)
def test_the_rate_holds_over_any_run_of_sends(rate: int, sizes: list[int]) -> None:
    """Sending through Throttle.take on the clock it sleeps on: the time taken is what
    the rate allows, within one burst (the bucket starts full)."""
    clock = FakeClock()
    throttle = Throttle(rate, clock=clock, sleep=clock.sleep)
    start = clock.now
    for n in sizes:
        throttle.take(n)
    elapsed = clock.now - start
    total = sum(sizes)
    burst = throttle.bucket.burst
    assert elapsed >= (total - burst) / rate - 1e-6  # never faster than the rate
    assert elapsed <= total / rate + 1e-6  # and never slower than needed


def test_a_big_upload_keeps_within_one_percent_of_the_rate() -> None:
    clock = FakeClock()
    rate = 10_000_000
    throttle = Throttle(rate, clock=clock, sleep=clock.sleep)
    start = clock.now
    total = 0
    for _ in range(1000):  # 1000 MiB in 1 MiB reads, as the S3 store reads its parts
        throttle.take(1 << 20)
        total += 1 << 20
    achieved = total / (clock.now - start)
    assert rate * 0.99 <= achieved <= rate * 1.01
