"""The IMAP mailboxes run as supervised loops of their e-mail account."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from adapters.base import AdapterContext, AdapterState
from adapters.email import EmailAdapter
from adapters.email import imap as imap_module
from adapters.testing import MemoryStore
from gateway.backoff import Backoff
from gateway.config import parse_config
from tests.adapters.conftest import refuse_ingest, refuse_token
from tests.conftest import free_port


async def test_a_mailbox_that_cannot_connect_is_restarted_shown_and_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_module, "RECONNECT_BACKOFF", Backoff(base=0.0, cap=0.0))
    port = free_port()  # nothing listens: every session fails at connect
    config = parse_config(f"""
[[channels]]
type = "email"
name = "support"
address = "support@shop.example"
imap = {{ host = "127.0.0.1", port = {port}, security = "none", timeout = 5 }}
""", environ={}).channels[0]
    async with aiohttp.ClientSession() as http:
        ctx = AdapterContext(ingest=refuse_ingest, http=http, public_url="http://127.0.0.1",
                             authorize=refuse_token, store=MemoryStore())
        adapter = EmailAdapter("support", config.options, ctx)  # type: ignore[arg-type]
        await adapter.start()
        deadline = time.monotonic() + 10
        while adapter.health().counters["imap_reconnects"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

        health = adapter.health()
        assert health.state is AdapterState.DEGRADED
        [loop] = health.loops
        assert loop.name == f"imap:support:-@127.0.0.1:{port}/INBOX"
        assert loop.label == "imap:support:0:INBOX"  # /metrics: no host, no user
        assert loop.restarts >= 2 and loop.last_success is None
        assert "cannot reach IMAP server" in (loop.last_error or "")
        assert health.last_error and health.last_error.startswith("imap -@127.0.0.1")

        await adapter.stop()
        assert not any(loop.alive for loop in adapter.health().loops)
        assert all(task.get_name() != loop.name for task in asyncio.all_tasks())
