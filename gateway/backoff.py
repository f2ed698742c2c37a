"""Backoff policy shared by every retrying part: exponential with jitter, capped.

Neutral (imports nothing of the daemon), so the outbox, webhooks, supervised loops and
adapters all take their delays from one place; a provider's ``Retry-After`` wins.
"""

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
        exp = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        spread = exp * self.jitter
        value = exp - spread + random.uniform(0, spread)
        if retry_after is not None:
            value = max(value, min(retry_after, self.cap * 6))
        return value
