"""Outbox worker: retries with backoff, permanent failures, order, limits, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.base import AdapterState, SendLimits
from adapters.testing import RecordingAdapter
from gateway.backoff import Backoff
from gateway.config import OutboxConfig, StoreConfig
from gateway.errors import PermanentSendError, RetryableSendError
from gateway.metrics import Metrics
from gateway.store.base import OutboundRequest
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party
from outbox.retry import TokenBucket
from outbox.worker import OutboxWorker


@dataclass
class Rig:
    """A store, a recording adapter and a worker wired together."""

    store: SQLiteStore
    adapter: RecordingAdapter
    worker: OutboxWorker

    async def conversation(self, sender: str) -> str:
        """A customer writes in; return the conversation id."""
        result = await self.store.ingest(InboundMessage(
            channel="api", account="rec", provider_message_id=f"in-{sender}-{time.time_ns()}",
            sender=Party("external", sender), text="hello"), [])
        return str(result.message["conversation_id"])

    async def reply(self, conversation_id: str, text: str) -> str:
        """Queue a reply and wake the worker."""
        _, message = await self.store.enqueue_outbound(
            conversation_id=conversation_id, customer_id=None,
            request=OutboundRequest(text=text), routes=self.routes(), idempotency=None)
        self.worker.wake()
        return str(message["id"])

    def routes(self) -> list:
        return [self.adapter.route("api")]

    async def status(self, message_id: str) -> dict:
        """The stored message."""
        return await self.store.get_message(message_id)

    async def wait_status(self, message_id: str, status: str, timeout: float = 10) -> dict:
        """Wait until the message reaches ``status``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self.status(message_id)
            if message["status"] == status:
                return message
            await asyncio.sleep(0.01)
        raise AssertionError(f"{message_id} never became {status}: {message}")


async def make_rig(tmp_path: Path, *, concurrency: int = 4, rate: float | None = None,
                   max_attempts: int = 5) -> Rig:
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{tmp_path}/o.db", data_dir=tmp_path,
                                    synchronous="NORMAL"))
    await store.open()
    adapter = RecordingAdapter("rec", limits=SendLimits(concurrency, rate))
    adapter.state = AdapterState.RUNNING
    worker = OutboxWorker(store, lambda channel, account: adapter,
                          OutboxConfig(workers=4, max_attempts=max_attempts, base_delay=0.05,
                                       max_delay=0.2), Metrics())
    return Rig(store, adapter, worker)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A running worker."""
    r = await make_rig(tmp_path)
    await r.worker.start()
    yield r
    await r.worker.stop(5)
    await r.store.close()


async def test_retryable_errors_are_retried_with_backoff_then_sent(rig: Rig) -> None:
    rig.adapter.script.errors = [RetryableSendError("503"), RetryableSendError("timeout")]
    conversation = await rig.conversation("c1")
    message_id = await rig.reply(conversation, "hello")
    message = await rig.wait_status(message_id, "sent")
    assert message["provider"]["message_id"] == f"prov-{message_id}"
    times = [t for mid, t in rig.adapter.attempts if mid == message_id]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.025  # base 0.05 with up to 50 % jitter
    assert message["error"] is None


async def test_retry_after_from_the_provider_is_honoured(rig: Rig) -> None:
    rig.adapter.script.errors = [RetryableSendError("429", retry_after=0.5)]
    message_id = await rig.reply(await rig.conversation("c2"), "x")
    await rig.wait_status(message_id, "sent")
    times = [t for mid, t in rig.adapter.attempts if mid == message_id]
    assert times[1] - times[0] >= 0.5


async def test_permanent_error_fails_the_message_with_its_code(rig: Rig) -> None:
    rig.adapter.script.errors = [PermanentSendError(
        "invalid recipient", provider_code="21211", provider_message="not a mobile number",
        error_code="invalid_recipient")]
    message_id = await rig.reply(await rig.conversation("c3"), "x")
    message = await rig.wait_status(message_id, "failed")
    assert message["error"]["code"] == "invalid_recipient"
    assert "not a mobile number" in message["error"]["message"]
    assert len(rig.adapter.attempts) == 1


async def test_giving_up_after_max_attempts(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, max_attempts=3)
    await rig.worker.start()
    try:
        rig.adapter.script.errors = [RetryableSendError("down")] * 10
        message_id = await rig.reply(await rig.conversation("c4"), "x")
        message = await rig.wait_status(message_id, "failed")
        assert message["error"]["code"] == "provider_unavailable"
        assert len(rig.adapter.attempts) == 3
    finally:
        await rig.worker.stop(5)
        await rig.store.close()


async def test_replies_of_one_conversation_go_out_in_order(rig: Rig) -> None:
    rig.adapter.script.errors = [RetryableSendError("first attempt fails")]
    conversation = await rig.conversation("c5")
    ids = [await rig.reply(conversation, f"part {i}") for i in range(4)]
    await rig.wait_status(ids[-1], "sent")
    assert [message.id for message in rig.adapter.sent] == ids


async def test_per_account_concurrency_limit(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, concurrency=2)
    rig.adapter.script.delay = 0.05
    await rig.worker.start()
    try:
        ids = [await rig.reply(await rig.conversation(f"k{i}"), "x") for i in range(8)]
        for message_id in ids:
            await rig.wait_status(message_id, "sent")
        assert rig.adapter.max_active == 2
    finally:
        await rig.worker.stop(5)
        await rig.store.close()


async def test_workers_is_the_number_of_sends_in_flight_overall(tmp_path: Path) -> None:
    """``[outbox] workers`` means what docs/configuration.md says: sends at once."""
    rig = await make_rig(tmp_path, concurrency=16)
    rig.worker = OutboxWorker(rig.store, lambda channel, account: rig.adapter,
                              OutboxConfig(workers=3, base_delay=0.05, max_delay=0.2),
                              Metrics())
    rig.adapter.script.delay = 0.05
    ids = [await rig.reply(await rig.conversation(f"w{i}"), "x") for i in range(10)]
    await rig.worker.start()  # all ten are due at once
    try:
        for message_id in ids:
            await rig.wait_status(message_id, "sent")
        assert rig.adapter.max_active == 3
    finally:
        await rig.worker.stop(5)
        await rig.store.close()


async def test_inflight_rows_are_sent_again_after_a_crash(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    message_id = await rig.reply(await rig.conversation("crash"), "x")
    claimed = await rig.store.claim_outbox(10)  # claimed, then the process "dies"
    assert [c.message["id"] for c in claimed] == [message_id]
    await rig.worker.start()  # a new start recovers in-flight rows
    try:
        await rig.wait_status(message_id, "sent")
    finally:
        await rig.worker.stop(5)
        await rig.store.close()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff = Backoff(base=1.0, cap=60.0, jitter=0.5)
    for attempt, expected in [(1, 1), (2, 2), (3, 4), (6, 32), (20, 60)]:
        value = backoff.delay(attempt)
        assert expected * 0.5 <= value <= expected
    assert backoff.delay(1, retry_after=30) >= 30


def test_token_bucket_limits_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=1)
    assert bucket.wait_time(0.0) == 0
    assert bucket.wait_time(0.1) == pytest.approx(0.4)
    assert bucket.wait_time(0.5) == 0
