"""Wakes long-polls, SSE streams and webhook dispatchers when new events commit."""

from __future__ import annotations

import asyncio
import contextlib


class FeedNotifier:
    """Tracks the newest committed event seq; waiters sleep until it passes theirs."""

    def __init__(self, head: int = 0) -> None:
        self.head = head
        self._changed = asyncio.Event()

    def notify(self, seq: int) -> None:
        """Called (on the loop) after a commit that added events up to ``seq``."""
        if seq > self.head:
            self.head = seq
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Wait until an event after ``seq`` exists; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head <= seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives just as the event is set, and a stopping daemon then hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return True
