"""``probe()`` (check-config --online) through line-bot-sdk against the fake: Get bot info,
on an account that was made but never started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.base import ChannelAdapter
from gateway.errors import AdapterAuthError, AdapterError
from tests.line.fake import FakeLine, Planned
from tests.probing import unstarted

ACCESS_TOKEN = "line-probe-access-token-0123456789"


@pytest.fixture
async def fake() -> AsyncIterator[FakeLine]:
    server = FakeLine(ACCESS_TOKEN)
    await server.start()
    yield server
    await server.stop()


def account(fake: FakeLine, http: aiohttp.ClientSession,
            token: str = ACCESS_TOKEN) -> ChannelAdapter:
    return unstarted(f"""
[[channels]]
type = "line"
name = "jp"
channel_secret = "line-channel-secret"
channel_access_token = "{token}"
api_base_url = "{fake.api_url}"
data_api_base_url = "{fake.data_url}"
timeout = 1
""", http)


async def test_the_account_is_named(fake: FakeLine, http: aiohttp.ClientSession) -> None:
    assert await account(fake, http).probe() == "LINE account Shop (@123abcde)"
    assert fake.info_calls == 1 and fake.push_attempts == 0


async def test_a_refused_token_is_an_auth_error_without_the_token(
        fake: FakeLine, http: aiohttp.ClientSession) -> None:
    wrong = "revoked-line-access-token-abcdef"
    with pytest.raises(AdapterAuthError) as caught:
        await account(fake, http, wrong).probe()
    assert "401" in caught.value.message and "channel access token" in caught.value.message
    assert wrong not in str(caught.value) and ACCESS_TOKEN not in str(caught.value)


@pytest.mark.parametrize("plan", [Planned(500, {"message": "Internal error"}),
                                  Planned(503), Planned(200, hang=3.0)],
                         ids=["500", "503", "timeout"])
async def test_an_unreachable_line_is_an_adapter_error_not_auth(
        fake: FakeLine, http: aiohttp.ClientSession, plan: Planned) -> None:
    fake.info_plans.append(plan)
    with pytest.raises(AdapterError) as caught:
        await account(fake, http).probe()
    assert not isinstance(caught.value, AdapterAuthError)
    assert ACCESS_TOKEN not in str(caught.value)
