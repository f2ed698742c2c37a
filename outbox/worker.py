"""Outbox workers: claim due rows, send through the account's adapter, record the outcome.

Order: at most one message per conversation is in flight, so replies arrive in the order
agents wrote them. Limits: each account has its own concurrency and optional rate. A
crash leaves rows ``inflight``; they go back to ``pending`` at the next start and are
sent again with the same idempotency key (the message id), which providers that support
one use to drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from adapters.base import ChannelAdapter
from gateway.backoff import Backoff
from gateway.config import OutboxConfig
from gateway.errors import PermanentSendError, RetryableSendError
from gateway.metrics import Metrics
from gateway.store.base import OutboxItem, OutboxStore
from outbox.message import outbound_message
from outbox.retry import TokenBucket

log = structlog.get_logger(__name__)


class OutboxWorker:
    """Runs until stopped; ``wake()`` after an enqueue makes it look at once."""

    def __init__(self, store: OutboxStore,
                 adapters: Callable[[str, str], ChannelAdapter | None],
                 config: OutboxConfig, metrics: Metrics) -> None:
        self.store = store
        self.adapters = adapters
        self.config = config
        self.metrics = metrics
        self.backoff = Backoff(config.base_delay, config.max_delay)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._limits: dict[str, asyncio.Semaphore] = {}  # per "type:account"
        self._buckets: dict[str, TokenBucket] = {}
        # `[outbox] workers` is the number of sends in flight at once, over all accounts
        # (each account is further limited by its own send_concurrency).
        self._capacity = asyncio.Semaphore(max(1, config.workers))

    def wake(self) -> None:
        """Something was queued: look now instead of at the next due time."""
        self._wake.set()

    async def start(self) -> None:
        """Recover rows left in flight by a crash and start the claim loop."""
        recovered = await self.store.recover_inflight()
        if recovered:
            log.warning("outbox.recovered_inflight", count=recovered)
        self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self, timeout: float) -> None:
        """Stop claiming; let sends in flight finish within ``timeout``, then cancel."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._sends:
            _done, pending = await asyncio.wait(self._sends, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("outbox.sends_cancelled", count=len(pending))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._cycle()
            except Exception:
                log.exception("outbox.cycle_failed")
                await self._sleep(1.0)

    async def _cycle(self) -> None:
        self._wake.clear()
        free = self._capacity._value
        items = await self.store.claim_outbox(max(1, free)) if free > 0 else []
        for item in items:
            await self._capacity.acquire()
            task = asyncio.create_task(self._send(item), name=f"send:{item.message['id']}")
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        depth = await self.store.outbox_depth()
        for state in ("pending", "inflight"):
            self.metrics.outbox_depth.labels(state).set(depth.get(state, 0))
        if items:
            return
        due = await self.store.next_outbox_due()
        wait = 5.0 if due is None else max(0.0, min(5.0, due - time.time()))
        await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives just as the wake-up is set, and stop() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def _limit(self, adapter: ChannelAdapter) -> asyncio.Semaphore:
        key = f"{adapter.type}:{adapter.name}"
        sem = self._limits.get(key)
        if sem is None:
            sem = asyncio.Semaphore(adapter.limits.concurrency)
            self._limits[key] = sem
        return sem

    async def _rate(self, adapter: ChannelAdapter) -> None:
        rate = adapter.limits.rate
        if not rate:
            return
        bucket = self._buckets.setdefault(f"{adapter.type}:{adapter.name}", TokenBucket(rate))
        while (delay := bucket.wait_time(time.monotonic())) > 0:
            await asyncio.sleep(delay)

    async def _send(self, item: OutboxItem) -> None:
        message = item.message
        bound = log.bind(message_id=message["id"], conversation_id=message["conversation_id"],
                         channel=message["channel"], account=message["account"],
                         attempt=item.attempts)
        labels = (message["channel"], message["account"])
        try:
            adapter = self.adapters(message["channel"], message["account"])
            if adapter is None:
                await self._retry_or_fail(item, bound, RetryableSendError(
                    f"account {message['account']!r} is not running",
                    error_code="account_unavailable"))
                return
            async with self._limit(adapter):
                await self._rate(adapter)
                try:
                    result = await adapter.send(outbound_message(item))
                except RetryableSendError as exc:
                    adapter.counters["send_errors"] += 1
                    await self._retry_or_fail(item, bound, exc)
                    return
                except PermanentSendError as exc:
                    adapter.counters["send_errors"] += 1
                    await self.store.outbox_failed(message["id"], _error(exc))
                    self.metrics.messages_out.labels(*labels, "failed").inc()
                    bound.warning("outbox.send_failed", code=exc.code, error=exc.message)
                    return
                except Exception as exc:
                    # An adapter bug must not lose the message: retry it like a transient error.
                    bound.exception("outbox.adapter_crashed")
                    adapter.counters["send_errors"] += 1
                    await self._retry_or_fail(item, bound, RetryableSendError(
                        f"adapter error: {type(exc).__name__}: {exc}",
                        error_code="adapter_error"))
                    return
            adapter.counters["sent"] += 1
            await self.store.outbox_sent(message["id"], result.provider_message_id,
                                         result.status)
            self.metrics.messages_out.labels(*labels, "sent").inc()
            bound.info("outbox.sent", provider_message_id=result.provider_message_id)
        finally:
            self._capacity.release()
            self._wake.set()

    async def _retry_or_fail(self, item: OutboxItem, bound: structlog.BoundLogger,
                             exc: RetryableSendError) -> None:
        age = time.time() - item.created_at.timestamp()
        message_id = item.message["id"]
        if item.attempts >= self.config.max_attempts or age >= self.config.max_age_seconds:
            await self.store.outbox_failed(message_id, _error(exc))
            self.metrics.messages_out.labels(item.message["channel"], item.message["account"],
                                             "failed").inc()
            bound.warning("outbox.gave_up", code=exc.code, error=exc.message)
            return
        delay = self.backoff.delay(item.attempts, exc.retry_after)
        await self.store.outbox_retry(message_id, delay, _error(exc))
        self.metrics.send_retries.labels(item.message["channel"], item.message["account"]).inc()
        bound.info("outbox.retry_scheduled", delay=round(delay, 2), code=exc.code,
                   error=exc.message)


def _error(exc: RetryableSendError | PermanentSendError) -> dict[str, str]:
    message = exc.message
    if exc.provider_message and exc.provider_message not in message:
        message = f"{message}: {exc.provider_message}"
    return {"code": exc.code, "message": message}
