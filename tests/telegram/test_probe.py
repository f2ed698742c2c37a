"""``probe()`` (check-config --online) against the fake Bot API: getMe and getWebhookInfo,
on an account that was made but never started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.base import ChannelAdapter
from gateway.errors import AdapterAuthError, AdapterConfigError, AdapterError
from tests.probing import unstarted
from tests.telegram.conftest import WEBHOOK_SECRET
from tests.telegram.fake import TOKEN, Failure, FakeBotApi

OWN_HOOK = "https://gateway.example/hooks/telegram/shop"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotApi]:
    """A fresh fake per test: each sets its own webhook state."""
    api = FakeBotApi()
    await api.start()
    yield api
    await api.stop()


def account(fake: FakeBotApi, http: aiohttp.ClientSession, *, token: str = TOKEN,
            webhook: bool = False) -> ChannelAdapter:
    mode = f'mode = "webhook"\nwebhook_secret = "{WEBHOOK_SECRET}"\n' if webhook else ""
    return unstarted(f"""
[[channels]]
type = "telegram"
name = "shop"
token = "{token}"
api_base_url = "{fake.url}"
timeout = 1
{mode}""", http)


async def test_a_polling_bot_is_named_and_nothing_changes(fake: FakeBotApi,
                                                          http: aiohttp.ClientSession) -> None:
    summary = await account(fake, http).probe()
    assert summary == "bot @shop_test_bot, polling (no webhook set)"
    assert [c.method for c in fake.calls] == ["getMe", "getWebhookInfo"]


async def test_a_webhook_bot_reports_its_webhook_and_last_delivery_error(
        fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    fake.webhook = {"url": OWN_HOOK}
    fake.webhook_error = "Wrong response from the webhook: 502 Bad Gateway"
    summary = await account(fake, http, webhook=True).probe()
    assert summary == (f"bot @shop_test_bot, webhook {OWN_HOOK}; Telegram's last delivery "
                       "error: Wrong response from the webhook: 502 Bad Gateway")
    assert fake.calls_of("setWebhook") == []


async def test_a_webhook_bot_before_its_first_start_has_no_webhook_yet(
        fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    summary = await account(fake, http, webhook=True).probe()
    assert summary == "bot @shop_test_bot, no webhook set yet (starting the account sets it)"


async def test_a_webhook_elsewhere_is_a_failure(fake: FakeBotApi,
                                                http: aiohttp.ClientSession) -> None:
    fake.webhook = {"url": "https://old-server.example/telegram"}
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, webhook=True).probe()
    assert "https://old-server.example/telegram" in caught.value.message
    assert OWN_HOOK in caught.value.message
    assert fake.webhook == {"url": "https://old-server.example/telegram"}  # left as it was


async def test_a_webhook_set_while_the_account_polls_is_a_failure(
        fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    fake.webhook = {"url": "https://other-desk.example/telegram"}
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http).probe()
    assert "https://other-desk.example/telegram" in caught.value.message
    assert "polls" in caught.value.message
    assert fake.calls_of("deleteWebhook") == [] and fake.webhook is not None


async def test_the_accounts_own_webhook_left_from_webhook_mode_is_only_reported(
        fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    fake.webhook = {"url": OWN_HOOK}
    summary = await account(fake, http).probe()
    assert summary == (f"bot @shop_test_bot, polling; its old webhook {OWN_HOOK} is still "
                       "set (starting the account deletes it)")
    assert fake.calls_of("deleteWebhook") == [] and fake.webhook is not None


async def test_a_token_in_the_webhook_url_is_not_repeated(fake: FakeBotApi,
                                                          http: aiohttp.ClientSession) -> None:
    fake.webhook = {"url": f"https://old-server.example/{TOKEN}"}
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, webhook=True).probe()
    assert TOKEN not in str(caught.value) and "<token>" in caught.value.message


async def test_a_refused_token_is_an_auth_error_without_the_token(
        fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    other = "987654321:AAH-some-other-token-abcdefghijkl"
    with pytest.raises(AdapterAuthError) as caught:
        await account(fake, http, token=other).probe()
    assert other not in str(caught.value) and "987654321" not in str(caught.value)
    assert caught.value.account == "shop"


@pytest.mark.parametrize("failure", [Failure(500), Failure(502, "Bad Gateway"),
                                     Failure(hang=3.0)], ids=["500", "502", "timeout"])
async def test_an_unreachable_api_is_an_adapter_error_not_auth(
        fake: FakeBotApi, http: aiohttp.ClientSession, failure: Failure) -> None:
    fake.fail["getMe"].append(failure)
    with pytest.raises(AdapterError) as caught:
        await account(fake, http).probe()
    assert not isinstance(caught.value, AdapterAuthError)
    assert TOKEN not in str(caught.value)
