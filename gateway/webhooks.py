"""Outbound webhooks: every matching event POSTed, signed, retried, then dead-lettered.

Per subscription, a dispatcher turns new events into delivery rows (its cursor is stored,
so a restart neither skips nor repeats), then sends the oldest open delivery of each
ordering key (the conversation, else the customer). A failure delays only that key: the
events of one conversation are delivered in order; other conversations keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import structlog

from gateway import signing
from gateway.backoff import Backoff
from gateway.config import WebhookConfig
from gateway.feed import FeedNotifier
from gateway.http import (
    REMOTE_EXCERPT_CHARS,
    redact_urls_in,
    remote_error_excerpt,
    retry_after_seconds,
)
from gateway.metrics import Metrics
from gateway.store.base import Delivery, WebhookStore

log = structlog.get_logger(__name__)


class WebhookDispatcher:
    """Delivers one subscription's events."""

    def __init__(self, config: WebhookConfig, store: WebhookStore, feed: FeedNotifier,
                 http: aiohttp.ClientSession, metrics: Metrics, *,
                 backoff: Backoff | None = None, concurrency: int = 16) -> None:
        self.config = config
        self.store = store
        self.feed = feed
        self.http = http
        self.metrics = metrics
        self.backoff = backoff or Backoff(base=config.retry_base_seconds,
                                          cap=config.retry_max_seconds)
        self.concurrency = concurrency
        self.log = log.bind(subscription=config.name)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.last_error: str | None = None

    async def start(self) -> None:
        """Recover in-flight rows and start dispatching."""
        await self.store.recover_deliveries()
        await self.store.fan_out(self.config.name, self.config.wants)  # sets a new cursor
        self._task = asyncio.create_task(self._run(), name=f"webhook:{self.config.name}")

    async def stop(self, timeout: float) -> None:
        """Stop after the deliveries in flight (bounded by ``timeout``)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def wake(self) -> None:
        """Look again now (a replay was requested)."""
        self._wake.set()

    async def _run(self) -> None:
        seen = -1
        while not self._stopping:
            try:
                await self.store.fan_out(self.config.name, self.config.wants)
                seen = self.feed.head
                batch = await self.store.claim_deliveries(self.config.name, self.concurrency)
                if batch:
                    await asyncio.gather(*(self._deliver(d) for d in batch))
                    continue
                due = await self.store.next_delivery_due(self.config.name)
                wait = 30.0 if due is None else max(0.0, min(30.0, due - time.time()))
                if wait > 0 and self.feed.head == seen:
                    await self._sleep_until_event(seen, wait)
            except Exception:
                self.log.exception("webhook.cycle_failed")
                await asyncio.sleep(1.0)

    async def _sleep_until_event(self, seen: int, wait: float) -> None:
        self._wake.clear()
        feed = asyncio.ensure_future(self.feed.wait_beyond(seen, wait))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({feed, woken}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (feed, woken):
                task.cancel()
            await asyncio.gather(feed, woken, return_exceptions=True)

    async def _deliver(self, delivery: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "Omnirelay-Event-Id": delivery.event_id,
            "Omnirelay-Signature": signing.sign(self.config.secret.reveal(), delivery.body),
            "User-Agent": "omnirelay-webhooks",
        }
        retry_after = None
        try:
            async with self.http.post(self.config.url, data=delivery.body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                                      allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    await self.store.delivery_done(delivery.id)
                    self.metrics.webhook_deliveries.labels(self.config.name).inc()
                    return
                # Redirects are refused (a 3xx is a failure): a signed body must not be
                # re-posted to wherever the receiver points. Only an excerpt of the answer
                # is kept: dead letters are readable through the API.
                excerpt = await response.content.read(REMOTE_EXCERPT_CHARS * 4)
                error = remote_error_excerpt(response.status, excerpt)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = redact_urls_in(f"{type(exc).__name__}: {exc}")[:300]
        self.last_error = error
        self.metrics.webhook_failures.labels(self.config.name).inc()
        age = time.time() - delivery.created_at.timestamp()
        delay = self.backoff.delay(delivery.attempts, retry_after)
        dead = age + delay > self.config.max_age_seconds
        await self.store.delivery_retry(delivery.id, delay, error, dead)
        if dead:
            self.metrics.webhook_dead.labels(self.config.name).inc()
            self.log.error("webhook.dead_lettered", event_id=delivery.event_id, error=error,
                           attempts=delivery.attempts)
        else:
            self.log.warning("webhook.retry_scheduled", event_id=delivery.event_id,
                             error=error, attempts=delivery.attempts, delay=round(delay, 2))
