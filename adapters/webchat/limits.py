"""Rate limits per visitor and per client address: token buckets kept in memory."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_KEYS = 100_000  # buckets kept; the fullest ones are dropped first beyond this


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class RateLimiter:
    """``per_minute`` events per key, with bursts of up to ``burst``.

    ``take`` answers 0 when the event may go ahead, else how many seconds until it may
    (the widget waits that long and sends again: nothing the visitor typed is lost).
    """

    per_minute: int
    burst: int
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token of ``key``; 0 if there was one, else the wait in seconds."""
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_KEYS:
                self._forget_full(now)
            bucket = self.buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = self._level(bucket, now)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / (self.per_minute / 60.0)

    def wait(self, key: str, now: float | None = None) -> float:
        """What ``take`` would answer, spending nothing."""
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(key)
        tokens = float(self.burst) if bucket is None else self._level(bucket, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / (self.per_minute / 60.0)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_minute / 60.0)

    def give_back(self, key: str) -> None:
        """Return a token spent on an event that turned out not to count (a duplicate)."""
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing."""
        rate = self.per_minute / 60.0
        for key in [k for k, b in self.buckets.items()
                    if b.tokens + (now - b.at) * rate >= self.burst]:
            del self.buckets[key]
        if len(self.buckets) >= MAX_KEYS:  # all busy: forget the oldest half
            for key in list(self.buckets)[: MAX_KEYS // 2]:
                del self.buckets[key]


def take_all(charges: Iterable[tuple[RateLimiter, str]], now: float | None = None) -> float:
    """Spend one token of every ``(limiter, key)``, or none: 0 when each had one, else the
    longest wait. An event one limit refuses costs the others nothing, so its retry is not
    charged twice (checked and spent with no ``await`` between: race-free on one loop)."""
    now = time.monotonic() if now is None else now
    charges = list(charges)
    wait = max((limit.wait(key, now) for limit, key in charges), default=0.0)
    if wait > 0:
        return wait
    for limit, key in charges:
        limit.take(key, now)
    return 0.0


def limiter(per_minute: int) -> RateLimiter:
    """A limiter allowing ``per_minute`` with a burst of a quarter minute's worth (≥ 5)."""
    return RateLimiter(per_minute, max(5, per_minute // 4))
