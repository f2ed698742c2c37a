"""A message the store could not keep (a full disk) costs the visitor no rate: the widget
sends it again, and that send is the one charged."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import base_config, free_port
from tests.email.test_store_failure import PipedDaemon
from tests.webchat.conftest import connect
from tests.webchat.test_protocol import cid

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux")

ORIGIN = "http://127.0.0.1:9"  # never loaded: the test speaks the widget's frames itself


@pytest.fixture
async def piped_daemon(tmp_path: Path) -> AsyncIterator[PipedDaemon]:
    """A daemon whose store the test breaks, with a web chat account of burst 5."""
    http_port = free_port()
    extra = f"""
        [[channels]]
        type = "webchat"
        name = "shop"
        allowed_origins = ["{ORIGIN}"]
        visitor_messages_per_minute = 20
        """
    daemon = PipedDaemon(tmp_path, base_config(tmp_path / "data", http_port, free_port(),
                                               extra=extra), http_port)
    daemon.start()
    await daemon.wait_ready()
    yield daemon
    daemon.limit_file_size("unlimited")
    assert await daemon.stop() == 0, daemon.logs()


async def test_a_message_the_store_could_not_keep_is_not_charged(
        piped_daemon: PipedDaemon) -> None:
    async with aiohttp.ClientSession() as session:
        visitor = await connect(session, piped_daemon, "shop", ORIGIN)
        try:
            piped_daemon.limit_file_size("1")  # every write past byte 1 fails: a full disk
            client_id = cid()
            for _ in range(6):  # more sends than the burst of 5: the widget's retries
                refused = await visitor.say("is my parcel lost?", client_id)
                assert refused["type"] == "error", refused
                assert refused["code"] != "rate_limited", refused
                assert refused["retry_after"] == 5, refused
            piped_daemon.limit_file_size("unlimited")
            stored = await visitor.say("is my parcel lost?", client_id)
            assert stored["type"] == "message", stored
            # The five of the burst, less the one message stored.
            answers = [await visitor.say(f"and {n}", cid()) for n in range(5)]
            assert [a["type"] for a in answers] == ["message"] * 4 + ["error"], answers
            assert answers[-1]["code"] == "rate_limited"
        finally:
            await visitor.ws.close()
    assert "store.commit_failed" in piped_daemon.logs()
