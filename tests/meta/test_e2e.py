"""The Meta channel in a real daemon process: secrets from the environment, Meta's webhooks
acknowledged only once committed (kill -9 loses none of them), and the reply sent through
the Graph API after the restart."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import TOKEN, Daemon, base_config, free_port
from tests.helpers import all_events, bearer, wait_until
from tests.meta.conftest import APP_SECRET, VERIFY_TOKEN, messenger_text, page_batch, sign, uid
from tests.meta.fake import PAGE_ID, PAGE_TOKEN, FakeGraph


def meta_daemon(tmp: Path, graph: FakeGraph) -> Daemon:
    http_port, smtp_port = free_port(), free_port()
    extra = textwrap.dedent(f"""
        [[channels]]
        type = "meta"
        name = "shop"
        app_secret_env = "TEST_META_APP_SECRET"
        verify_token_env = "TEST_META_VERIFY_TOKEN"
        page_id = "{PAGE_ID}"
        page_access_token_env = "TEST_META_PAGE_TOKEN"
        graph_base_url = "{graph.url}/v21.0"
        timeout = 2
        """)
    return Daemon(tmp, base_config(tmp, http_port, smtp_port, extra=extra), http_port, env={
        "TEST_META_APP_SECRET": APP_SECRET, "TEST_META_VERIFY_TOKEN": VERIFY_TOKEN,
        "TEST_META_PAGE_TOKEN": PAGE_TOKEN})


async def test_kill_9_loses_no_acknowledged_webhook_and_the_reply_goes_out_after(
        tmp_path: Path, fake_graph: FakeGraph) -> None:
    fake_graph.reset()
    daemon = meta_daemon(tmp_path, fake_graph)
    daemon.start()
    acked: list[str] = []
    psid = uid()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            for n in range(21):
                event = messenger_text(psid, f"message {n}")
                raw = orjson.dumps(page_batch(event))
                try:
                    async with http.post(f"{daemon.url}/hooks/meta/shop", data=raw, headers={
                            "Content-Type": "application/json",
                            "X-Hub-Signature-256": sign(raw)}) as response:
                        if response.status == 200:
                            acked.append(event["message"]["mid"])
                except aiohttp.ClientError:
                    pass  # in flight when the process died: not acknowledged, Meta retries
                if n == 19:
                    daemon.kill()  # right after the 20th acknowledgement
        assert len(acked) == 20

        daemon.start()
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            stored = {e["data"]["message"]["provider"]["message_id"]: e["data"]["message"]
                      for e in await all_events(http, daemon.url)
                      if e["type"] == "message.received"}
            assert set(acked) <= set(stored)
            conversation_id = stored[acked[0]]["conversation_id"]
            async with http.post(f"{daemon.url}/v1/conversations/{conversation_id}/messages",
                                 json={"text": "All received"}, headers=bearer(TOKEN)) as resp:
                assert resp.status == 202, await resp.text()

            async def sent() -> Any:
                return [b for b in fake_graph.sends(PAGE_ID)
                        if b["message"] == {"text": "All received"}]
            (body,) = await wait_until(sent)
            assert body["recipient"] == {"id": psid} and body["messaging_type"] == "RESPONSE"
        assert APP_SECRET not in daemon.logs() and PAGE_TOKEN not in daemon.logs()
    finally:
        await daemon.stop()
