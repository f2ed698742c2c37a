"""Per-account send-rate limits (the backoff policy is ``gateway/backoff.py``)."""

from __future__ import annotations


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
