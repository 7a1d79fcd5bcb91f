"""Client-side throttling and retry timing.

Rate limits are token buckets that refill continuously (``rate`` units per minute) and hold at
most ``burst_s`` seconds' worth, so a run starts promptly without flooding a fresh endpoint.
A request larger than the bucket waits for a full bucket and then borrows (the level goes
negative); otherwise a single long prompt under a small tokens-per-minute limit would wait
forever. The clock and sleep are injectable so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        # One waiter at a time keeps the order fair (first come, first served).
        async with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                await self._sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back (or, negative, take) units once the true cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a server asked us to wait: ``retry-after-ms``, ``Retry-After`` in seconds, or
    ``Retry-After`` as an HTTP date. None when absent or unreadable."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so retries
    from many concurrent calls spread out but never collapse to zero."""
    step = min(cap, base * (2**attempt))
    return step / 2 + rng.uniform(0, step / 2)
