"""Supervised loops: restarted with backoff when they crash, shown in health, cancelled at stop."""

from __future__ import annotations

import asyncio

from adapters.base import AdapterState
from adapters.testing import RecordingAdapter
from gateway.backoff import Backoff
from gateway.errors import AdapterAuthError
from gateway.supervisor import LoopBody, LoopGroup, SupervisedLoop

NO_WAIT = Backoff(base=0.0, cap=0.0)  # restarts at once: the test waits on events, not time


class Flaky:
    """A loop body that fails ``failures`` times, then reports progress and keeps running."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.working = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, loop: SupervisedLoop) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise ConnectionResetError(f"provider hung up (run {self.runs})")
        loop.ok()
        self.working.set()
        try:
            await asyncio.Event().wait()  # a long-lived loop: runs until cancelled
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_a_loop_that_crashes_twice_is_restarted_and_health_shows_it() -> None:
    body = Flaky(failures=2)
    group = LoopGroup()
    loop = group.supervise("imap:support:INBOX", body, backoff=NO_WAIT)
    await asyncio.wait_for(body.working.wait(), 5)

    health = group.health()[0]
    assert body.runs == 3
    assert health.name == "imap:support:INBOX"
    assert health.alive and health.restarts == 2
    assert health.last_error == "provider hung up (run 2)"
    assert health.last_success is not None
    entry = health.to_json()
    assert entry["alive"] is True and entry["restarts"] == 2
    assert entry["label"] == health.label == "imap:support:INBOX"  # none given: the name
    assert isinstance(entry["last_success"], str) and entry["last_success"].endswith("Z")

    await group.stop()
    assert body.cancelled.is_set() and not loop.alive
    assert not group.health()[0].alive


async def test_backoff_grows_with_failures_and_resets_after_progress() -> None:
    """Consecutive failures wait longer; a success starts the count afresh."""
    asked: list[int] = []

    class Recording(Backoff):
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            asked.append(attempt)
            return 0.0

    runs = 0
    done = asyncio.Event()

    async def body(loop: SupervisedLoop) -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            loop.ok()  # progress, then a failure: the backoff starts over
        if runs == 5:
            done.set()
            return  # finished: a loop that returns is not restarted
        raise OSError("boom")

    loop = SupervisedLoop("poll", body, backoff=Recording())
    loop.start()
    await asyncio.wait_for(done.wait(), 5)
    await loop.stop()
    assert asked == [1, 2, 1, 2]
    assert loop.restarts == 4


async def test_rejected_credentials_are_retried_slowly() -> None:
    asked: list[int] = []
    waiting = asyncio.Event()

    class Recording(Backoff):
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            asked.append(attempt)
            waiting.set()
            return 3600.0

    async def body(loop: SupervisedLoop) -> None:
        raise AdapterAuthError("IMAP login rejected for support")

    loop = SupervisedLoop("imap", body, backoff=Recording())
    loop.start()
    await asyncio.wait_for(waiting.wait(), 5)
    assert asked == [5]  # the first failure already waits as long as after five
    assert loop.last_error == "IMAP login rejected for support"
    assert not loop.alive  # waiting out its backoff
    await loop.stop()


async def test_an_adapter_stop_cancels_its_loops_in_reverse_order() -> None:
    adapter = RecordingAdapter("rec")
    stopped: list[str] = []
    running = {name: asyncio.Event() for name in ("first", "second")}

    def body(name: str) -> LoopBody:
        async def run(loop: SupervisedLoop) -> None:
            loop.ok()
            running[name].set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)
        return run

    await adapter.start()
    adapter.ctx.supervise("first", body("first"), backoff=NO_WAIT)
    adapter.ctx.supervise("second", body("second"), backoff=NO_WAIT)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in running.values())), 5)

    health = adapter.health()
    assert [loop.name for loop in health.loops] == ["first", "second"]
    assert all(loop.alive and loop.restarts == 0 for loop in health.loops)

    await adapter.stop()
    assert adapter.state is AdapterState.STOPPED
    assert stopped == ["second", "first"]
    assert not any(loop.alive for loop in adapter.health().loops)
