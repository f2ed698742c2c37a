"""``probe()`` (check-config --online) against the fake Graph API: the Page behind the Page
token, its Instagram account, the WhatsApp number; the account is never started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.base import ChannelAdapter
from gateway.errors import AdapterAuthError, AdapterConfigError, AdapterError
from tests.meta.fake import (
    INSTAGRAM_ID,
    PAGE_ID,
    PAGE_TOKEN,
    PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    Failure,
    FakeGraph,
)
from tests.probing import unstarted


@pytest.fixture
async def fake() -> AsyncIterator[FakeGraph]:
    graph = FakeGraph()
    await graph.start()
    yield graph
    await graph.stop()


def account(fake: FakeGraph, http: aiohttp.ClientSession, networks: str) -> ChannelAdapter:
    return unstarted(f"""
[[channels]]
type = "meta"
name = "shop"
app_secret = "app-secret"
verify_token = "verify-token"
graph_base_url = "{fake.url}"
timeout = 1
{networks}
""", http)


PAGE = f'page_id = "{PAGE_ID}"\npage_access_token = "{PAGE_TOKEN}"\n'
WHATSAPP = (f'whatsapp_phone_number_id = "{PHONE_NUMBER_ID}"\n'
            f'whatsapp_access_token = "{WHATSAPP_TOKEN}"\n')


async def test_a_page_is_named(fake: FakeGraph, http: aiohttp.ClientSession) -> None:
    assert await account(fake, http, PAGE).probe() == f"Page Shop Page ({PAGE_ID})"
    [call] = fake.calls
    assert call.path == "/v21.0/me?fields=id,name"
    assert call.authorization == f"Bearer {PAGE_TOKEN}"  # in the header, never the URL


async def test_every_network_is_checked(fake: FakeGraph, http: aiohttp.ClientSession) -> None:
    networks = PAGE + f'instagram_account_id = "{INSTAGRAM_ID}"\n' + WHATSAPP
    summary = await account(fake, http, networks).probe()
    assert summary == (f"Page Shop Page ({PAGE_ID}), Instagram {INSTAGRAM_ID}, WhatsApp "
                       "+1 555-010-0100 (Shop, quality GREEN)")
    assert [c.path for c in fake.calls] == [
        "/v21.0/me?fields=id,name,instagram_business_account",
        f"/v21.0/{PHONE_NUMBER_ID}?fields=display_phone_number,verified_name,quality_rating"]
    assert fake.sends() == []


async def test_a_token_of_another_page_is_a_failure(fake: FakeGraph,
                                                    http: aiohttp.ClientSession) -> None:
    fake.page = {"id": "100000000000999", "name": "Other Page"}
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, PAGE).probe()
    assert "Other Page" in caught.value.message and PAGE_ID in caught.value.message


async def test_an_instagram_account_not_linked_to_the_page_is_a_failure(
        fake: FakeGraph, http: aiohttp.ClientSession) -> None:
    fake.linked_instagram = None
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, PAGE + f'instagram_account_id = "{INSTAGRAM_ID}"\n').probe()
    assert INSTAGRAM_ID in caught.value.message and "none linked" in caught.value.message


@pytest.mark.parametrize(("networks", "token"),
                         [(PAGE, PAGE_TOKEN), (WHATSAPP, WHATSAPP_TOKEN)],
                         ids=["page", "whatsapp"])
async def test_a_refused_token_is_an_auth_error_without_the_token(
        fake: FakeGraph, http: aiohttp.ClientSession, networks: str, token: str) -> None:
    wrong = "EAAB-expired-token-0123456789"
    with pytest.raises(AdapterAuthError) as caught:
        await account(fake, http, networks.replace(token, wrong)).probe()
    assert "code 190" in caught.value.message
    assert wrong not in str(caught.value) and token not in str(caught.value)


@pytest.mark.parametrize("failure", [Failure(500, 1, message="An unknown error occurred"),
                                     Failure(503, 2, transient=True), Failure(hang=True)],
                         ids=["500", "503", "timeout"])
async def test_an_unreachable_graph_is_an_adapter_error_not_auth(
        fake: FakeGraph, http: aiohttp.ClientSession, failure: Failure) -> None:
    fake.fail_next(failure)
    with pytest.raises(AdapterError) as caught:
        await account(fake, http, WHATSAPP).probe()
    assert not isinstance(caught.value, AdapterAuthError)
    assert WHATSAPP_TOKEN not in str(caught.value)


async def test_an_unknown_phone_number_id_is_a_configuration_error(
        fake: FakeGraph, http: aiohttp.ClientSession) -> None:
    fake.fail_next(Failure(400, 100, 33, "Unsupported get request. Object with ID "
                                         f"'{PHONE_NUMBER_ID}' does not exist"))
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, WHATSAPP).probe()
    assert "does not exist" in caught.value.message
