"""Backoff policy: exponential with full jitter, capped; a provider's Retry-After wins."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)`` for the n-th failed attempt (1-based)."""

    base: float = 1.0
    cap: float = 600.0
    jitter: float = 0.5  # fraction of the delay that is randomized

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt."""
        exp = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        spread = exp * self.jitter
        value = exp - spread + random.uniform(0, spread)
        if retry_after is not None:
            value = max(value, min(retry_after, self.cap * 6))
        return value


class TokenBucket:
    """A per-account send-rate limit (messages per second, with a small burst)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated: float | None = None

    def wait_time(self, now: float) -> float:
        """Take a token if one is free (return 0) or say how long until one is."""
        if self.updated is None:
            self.updated = now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
