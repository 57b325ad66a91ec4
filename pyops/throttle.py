"""A token bucket: the upload rate limit (`[offsite] max_upload_rate`).

Pure arithmetic over an injectable monotonic clock: `TokenBucket.reserve(n)` says how
long to wait before `n` more bytes may go; `Throttle` does the waiting. The bucket
starts full and holds at most `burst` bytes (one second's worth by default), so over
any stretch of time the bytes let through are at most `burst + rate * elapsed`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`rate` bytes per second (0: unlimited), with room for `burst` bytes at once."""

    def __init__(self, rate: int, burst: int | None = None, clock: Clock = time.monotonic) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.rate = rate
        self.burst = max(1, burst if burst is not None else rate)
        self.clock = clock
        self.tokens = float(self.burst)
        self.last = clock()

    def reserve(self, n: int) -> float:
        """Take `n` bytes' worth of tokens (running into debt if need be) and return
        the seconds to wait before sending them: 0 while the bucket holds enough."""
        if self.rate == 0 or n <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Throttle:
    """A token bucket shared by the threads of one store, sleeping as it says."""

    def __init__(
        self,
        rate: int,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = TokenBucket(rate, clock=clock)
        self.sleep = sleep
        self.lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self.bucket.rate > 0

    def take(self, n: int) -> None:
        """Block until `n` more bytes may be sent."""
        if not self.limited:
            return
        with self.lock:
            wait = self.bucket.reserve(n)
        if wait > 0:
            self.sleep(wait)
