"""Supervised loops: the daemon-owned way for an adapter to run a long-lived task.

An adapter's IMAP IDLE session, a Telegram ``getUpdates`` poll or a media fetch queue is a
*body*: a coroutine function that takes its :class:`SupervisedLoop` and runs until it fails.
The loop restarts it with capped exponential backoff and jitter when it raises, resets the
backoff whenever the body reports progress (:meth:`SupervisedLoop.ok`), and records what
``/v1/channels`` shows: alive, last success, last error, restarts. A :class:`LoopGroup`
owns one adapter's loops and cancels them in reverse start order when the adapter stops.

Example, from an adapter's ``on_start``::

    async def poll(loop: SupervisedLoop) -> None:
        async with connect() as session:     # raising here: restarted after a backoff
            while True:
                await session.fetch_new()
                loop.ok()                   # progress: the next failure starts afresh

    self.ctx.supervise("telegram:getUpdates", poll)

A loop's ``name`` may say what it connects to (an IMAP mailbox's user, host and folder:
``/v1/channels``, behind a token, and the logs show it). Its ``label`` names it on
unauthenticated ``/metrics``, so it is made of configuration that carries no personal data
(``imap:<account>:<n>:<folder>``); it is the name unless the adapter gives one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from gateway.backoff import Backoff
from gateway.errors import AdapterAuthError, AdapterConfigError, OmnirelayError

log = structlog.get_logger(__name__)

LoopBody = Callable[["SupervisedLoop"], Awaitable[None]]
"""Runs until it fails (raise) or is done (return); reports progress with ``loop.ok()``."""

Ownership = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]
"""Runs a named loop's body only while this instance owns the name (several instances on one
PostgreSQL store: one IMAP session per mailbox); waits for ownership first, and fails when
ownership is lost. See ``PostgresStore.run_owned``."""

DEFAULT_BACKOFF = Backoff(base=1.0, cap=300.0)
SLOW_RETRY_FAILURES = 5
"""Bad credentials or settings cannot fix themselves quickly: retry as if failed this often."""


@dataclass(frozen=True, slots=True)
class LoopHealth:
    """One loop as ``/v1/channels`` shows it."""

    name: str
    alive: bool
    last_success: float | None
    last_error: str | None
    restarts: int
    label: str  # its ``loop`` label on /metrics (no personal data; module docstring)

    def to_json(self) -> dict[str, str | bool | int | None]:
        """The ``loops[]`` entry of an account in ``/v1/channels`` (times in ISO 8601)."""
        return {"name": self.name, "label": self.label, "alive": self.alive,
                "last_success": _iso(self.last_success), "last_error": self.last_error,
                "restarts": self.restarts}


class SupervisedLoop:
    """Runs one body again and again until stopped; see the module docstring."""

    def __init__(self, name: str, body: LoopBody, *, backoff: Backoff = DEFAULT_BACKOFF,
                 owner: Ownership | None = None, label: str | None = None) -> None:
        self.name = name
        self.label = label or name
        self.body = body
        self.backoff = backoff
        self.owner = owner
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.restarts = 0
        self.running = False  # the body is running (not waiting out a backoff, not done)
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self.log = log.bind(loop=name)

    @property
    def alive(self) -> bool:
        """Whether the body is running now."""
        return self.running and self._task is not None and not self._task.done()

    def ok(self) -> None:
        """The body made progress: note the time, and the next failure starts afresh."""
        self.last_success = time.time()
        self._failures = 0

    def start(self) -> None:
        """Start the loop's task (named after the loop). Safe to call twice."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the body and wait for it to unwind. Safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # the caller's own cancellation still propagates
        self.running = False

    def health(self) -> LoopHealth:
        """A cheap snapshot."""
        return LoopHealth(self.name, self.alive, self.last_success, self.last_error,
                          self.restarts, self.label)

    async def _run(self) -> None:
        while True:
            self.running = True
            try:
                if self.owner is None:
                    await self.body(self)
                else:
                    await self.owner(self.name, lambda: self.body(self))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervisor: every failure is recorded and retried
                failure = exc
            else:
                self.log.info("loop.finished")
                return
            finally:
                self.running = False
            self._failures += 1
            if isinstance(failure, AdapterAuthError | AdapterConfigError):
                self._failures = max(self._failures, SLOW_RETRY_FAILURES)
            self.restarts += 1
            self.last_error = _describe(failure)
            delay = self.backoff.delay(self._failures)
            expected = isinstance(failure, OmnirelayError | OSError | TimeoutError)
            self.log.warning("loop.restarting", error=self.last_error, restarts=self.restarts,
                             retry_in=round(delay, 2), exc_info=None if expected else failure)
            await asyncio.sleep(delay)


class LoopGroup:
    """The supervised loops of one owner (an adapter), stopped together in reverse order."""

    def __init__(self, owner: Ownership | None = None) -> None:
        self.loops: list[SupervisedLoop] = []
        self.owner = owner  # set: each loop runs only while this instance owns its name

    def supervise(self, name: str, body: LoopBody, *, backoff: Backoff = DEFAULT_BACKOFF,
                  label: str | None = None) -> SupervisedLoop:
        """Start ``body`` under supervision and return its loop (for ``ok()`` and health);
        ``label`` names it on /metrics when ``name`` holds personal data."""
        loop = SupervisedLoop(name, body, backoff=backoff, owner=self.owner, label=label)
        self.loops.append(loop)
        loop.start()
        return loop

    async def stop(self) -> None:
        """Cancel every loop, the last started first, each awaited before the next."""
        for loop in reversed(self.loops):
            await loop.stop()

    def health(self) -> list[LoopHealth]:
        """Every loop's snapshot, in start order."""
        return [loop.health() for loop in self.loops]


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
