"""Nothing acknowledged is lost: webhook outages, dead letters, kill -9."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import aiohttp

from gateway import signing
from tests.conftest import WEBHOOK_SECRET, Daemon, Receiver, base_config, free_port
from tests.helpers import all_events, get_json, post_inbound, post_json, unique


def webhook_config(tmp: Path, receiver_url: str, *, max_age: float = 3600,
                   callback_url: str | None = None) -> tuple[str, int]:
    """A daemon config with a fast-retrying webhook (and optionally a CRM callback)."""
    port = free_port()
    extra = f"""
        [[channels]]
        type = "api"
        name = "crm"
        secret = "crm-secret-0123456789"
        {f'callback_url = "{callback_url}"' if callback_url else ""}
        [[webhooks]]
        name = "helpdesk"
        url = "{receiver_url}/webhook"
        secret = "{WEBHOOK_SECRET}"
        retry_base_seconds = 0.1
        retry_max_seconds = 0.5
        max_age_seconds = {max_age}
        """
    return base_config(tmp / "data", port, free_port(), extra=extra), port


async def test_webhook_receiver_down_for_a_while_gets_every_event_in_order(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    receiver = Receiver(port=free_port())  # not started: connections are refused
    config, port = webhook_config(tmp_path, receiver.url)
    daemon = Daemon(tmp_path, config, port)
    daemon.start()
    try:
        await daemon.wait_ready()
        customers = [unique("c") for _ in range(3)]
        for round_ in range(4):
            for customer in customers:
                status, _ = await post_inbound(http, daemon.url, {
                    "message_id": unique("m"), "from": {"id": customer},
                    "text": f"round {round_}"})
                assert status == 201
        # Down, then failing with 503 + Retry-After, then up.
        await asyncio.sleep(0.5)
        receiver.fail_with = 503
        receiver.headers_on_fail = {"Retry-After": "0"}
        await receiver.start()
        await asyncio.sleep(0.5)
        assert receiver.attempts, "the daemon never retried"
        receiver.fail_with = None

        events = await all_events(http, daemon.url)
        await receiver.wait_for(lambda reqs: {r.json()["id"] for r in reqs}
                                >= {e["id"] for e in events}, timeout=20)
        delivered = [r.json() for r in receiver.requests]
        for request in receiver.requests:
            assert signing.verify(request.headers["Omnirelay-Signature"], WEBHOOK_SECRET,
                                  request.body)
        by_conversation: dict[str, list[int]] = defaultdict(list)
        for event in delivered:
            data = event["data"]
            key = (data.get("conversation") or {}).get("id") or \
                (data.get("message") or {}).get("conversation_id")
            if key:
                by_conversation[key].append(int(event["seq"]))
        assert len(by_conversation) == 3
        for seqs in by_conversation.values():
            assert seqs == sorted(seqs)
            assert len(seqs) == 5  # conversation.opened + 4 messages
    finally:
        assert await daemon.stop() == 0, daemon.logs()
        await receiver.stop()


async def test_undeliverable_events_are_dead_lettered_then_replayed(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    receiver = Receiver(port=free_port())
    config, port = webhook_config(tmp_path, receiver.url, max_age=1)
    daemon = Daemon(tmp_path, config, port)
    daemon.start()
    try:
        await daemon.wait_ready()
        await post_inbound(http, daemon.url, {"message_id": unique("m"),
                                              "from": {"id": unique("c")}, "text": "lost?"})

        async def dead() -> list:
            _, body = await get_json(http, f"{daemon.url}/v1/webhooks/dead-letters")
            return body["dead_letters"] if len(body["dead_letters"]) == 3 else []

        for _ in range(200):
            letters = await dead()
            if letters:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("events were not dead-lettered")
        assert {d["event"]["type"] for d in letters} == {
            "customer.created", "conversation.opened", "message.received"}
        assert all(d["last_error"] for d in letters)

        await receiver.start()
        status, body = await post_json(http, f"{daemon.url}/v1/webhooks/dead-letters/replay",
                                       {})
        assert (status, body["replayed"]) == (200, 3)
        await receiver.wait_for(lambda reqs: len(reqs) >= 3)
        assert {r.json()["id"] for r in receiver.requests} == {d["event"]["id"]
                                                               for d in letters}
        _, body = await get_json(http, f"{daemon.url}/v1/webhooks/dead-letters")
        assert body["dead_letters"] == []
    finally:
        assert await daemon.stop() == 0, daemon.logs()
        await receiver.stop()


async def test_kill_9_mid_burst_loses_no_acknowledged_message_and_outbox_resumes(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    callback = Receiver()
    await callback.start()
    callback.fail_with = 500  # replies stay in the outbox, retrying
    config, port = webhook_config(tmp_path, "http://127.0.0.1:9", callback_url=callback.url)
    daemon = Daemon(tmp_path, config, port)
    daemon.start()
    try:
        await daemon.wait_ready()
        status, first = await post_inbound(http, daemon.url, {
            "message_id": unique("m"), "from": {"id": unique("c")}, "text": "start"})
        conversation = first["message"]["conversation_id"]
        replies = []
        for i in range(3):
            status, queued = await post_json(
                http, f"{daemon.url}/v1/conversations/{conversation}/messages",
                {"text": f"reply {i}"})
            assert status == 202
            replies.append(queued["id"])
        await callback.wait_for(lambda _: len(callback.attempts) >= 1)

        acked: list[str] = []
        killed = asyncio.Event()

        async def poster(worker: int) -> None:
            for i in range(100):
                if killed.is_set():
                    return
                provider_id = f"burst-{worker}-{i}"
                try:
                    status, _ = await post_inbound(http, daemon.url, {
                        "message_id": provider_id, "from": {"id": f"burst-{worker % 5}"},
                        "text": f"message {i}"})
                except (TimeoutError, aiohttp.ClientError):
                    return
                if status in (200, 201):
                    acked.append(provider_id)
                if len(acked) >= 150 and not killed.is_set():
                    killed.set()
                    daemon.kill()

        await asyncio.gather(*(poster(w) for w in range(10)))
        assert killed.is_set()
        assert len(acked) >= 150

        callback.fail_with = None
        daemon.start()
        await daemon.wait_ready()
        events = await all_events(http, daemon.url)
        stored: dict[str, int] = defaultdict(int)
        for event in events:
            if event["type"] == "message.received":
                stored[event["data"]["message"]["provider"]["message_id"]] += 1
        missing = [p for p in acked if stored.get(p) != 1]
        assert missing == [], f"{len(missing)} acknowledged messages lost or doubled"

        # The replies queued before the crash are delivered after it, in order.
        await callback.wait_for(lambda reqs: {r.json()["message"]["id"] for r in reqs}
                                >= set(replies), timeout=20)
        order = [r.json()["message"]["id"] for r in callback.requests
                 if r.json()["message"]["id"] in replies]
        assert order[:3] == replies
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            assert await daemon.stop() == 0, daemon.logs()
        await callback.stop()
