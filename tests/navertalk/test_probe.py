"""``probe()`` (check-config --online): TalkTalk has no read-only call, so the account says
there is nothing to check and calls nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.navertalk.fake import FakeTalkTalk
from tests.probing import unstarted

TOKEN = "ct_wc8b1i_probe_partner_token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTalkTalk]:
    server = FakeTalkTalk(TOKEN)
    await server.start()
    yield server
    await server.stop()


async def test_there_is_nothing_to_check_and_nothing_is_sent(fake: FakeTalkTalk) -> None:
    async with aiohttp.ClientSession() as http:
        adapter = unstarted(f"""
[[channels]]
type = "navertalk"
name = "store"
authorization = "{TOKEN}"
api_base_url = "{fake.url}"
""", http)
        assert await adapter.probe() is None
    assert fake.requests == 0 and fake.sent == []
