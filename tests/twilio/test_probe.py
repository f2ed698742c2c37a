"""``probe()`` (check-config --online) through the real twilio SDK against the fake: the
account, the sending number or messaging service; the account is never started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.base import ChannelAdapter
from gateway.errors import AdapterAuthError, AdapterConfigError, AdapterError
from tests.conftest import free_port
from tests.probing import unstarted
from tests.twilio.conftest import SERVICE_SID
from tests.twilio.fake import SID, TOKEN, FakeTwilio, Scripted, StorageHost


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    storage = StorageHost()
    twilio = FakeTwilio(storage)
    await twilio.start()
    yield twilio
    await twilio.stop()


def account(fake: FakeTwilio, http: aiohttp.ClientSession, *, token: str = TOKEN,
            sender: str = 'from = "+15550001111"') -> ChannelAdapter:
    return unstarted(f"""
[[channels]]
type = "twilio"
name = "us-sms"
account_sid = "{SID}"
auth_token = "{token}"
{sender}
api_base_url = "{fake.url}"
timeout = 1.0
""", http)


async def test_an_account_sending_from_its_own_number(fake: FakeTwilio,
                                                      http: aiohttp.ClientSession) -> None:
    summary = await account(fake, http).probe()
    assert summary == "Twilio account Shop support (active), sends from +15550001111"
    assert fake.reads == [f"/2010-04-01/Accounts/{SID}.json",
                          f"/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json"
                          "?PhoneNumber=%2B15550001111&PageSize=1"]
    assert fake.created == []


async def test_an_account_sending_through_a_messaging_service(
        fake: FakeTwilio, http: aiohttp.ClientSession) -> None:
    fake.services[SERVICE_SID] = "Shop notifications"
    summary = await account(fake, http,
                            sender=f'messaging_service_sid = "{SERVICE_SID}"').probe()
    assert summary == ("Twilio account Shop support (active), sends through messaging "
                       f"service Shop notifications ({SERVICE_SID})")
    assert fake.reads[-1] == f"/v1/Services/{SERVICE_SID}"


async def test_a_messaging_service_of_another_account_is_a_failure(
        fake: FakeTwilio, http: aiohttp.ClientSession) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, sender=f'messaging_service_sid = "{SERVICE_SID}"').probe()
    assert SERVICE_SID in caught.value.message


async def test_a_number_not_on_the_account_is_a_failure(fake: FakeTwilio,
                                                        http: aiohttp.ClientSession) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http, sender='from = "+15559998888"').probe()
    assert "+15559998888" in caught.value.message and "not a phone number" in \
        caught.value.message


@pytest.mark.parametrize("status", ["suspended", "closed"])
async def test_a_suspended_or_closed_account_is_a_failure(
        fake: FakeTwilio, http: aiohttp.ClientSession, status: str) -> None:
    fake.account_status = status
    with pytest.raises(AdapterConfigError) as caught:
        await account(fake, http).probe()
    assert f"is {status}" in caught.value.message
    assert len(fake.reads) == 1  # no number looked up for an account that cannot send


async def test_refused_credentials_are_an_auth_error_without_the_token(
        fake: FakeTwilio, http: aiohttp.ClientSession) -> None:
    wrong = "wrong-auth-token-fedcba9876543210"
    with pytest.raises(AdapterAuthError) as caught:
        await account(fake, http, token=wrong).probe()
    assert "20003" in caught.value.message and "auth_token" in caught.value.message
    assert wrong not in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize("answer", [Scripted(500, 20500, "Internal Server Error"),
                                    Scripted(503), Scripted(hang=True)],
                         ids=["500", "503", "timeout"])
async def test_an_unreachable_twilio_is_an_adapter_error_not_auth(
        fake: FakeTwilio, http: aiohttp.ClientSession, answer: Scripted) -> None:
    fake.read_script.append(answer)
    with pytest.raises(AdapterError) as caught:
        await account(fake, http).probe()
    assert not isinstance(caught.value, AdapterAuthError)
    assert TOKEN not in str(caught.value)



async def test_a_closed_port_says_the_connection_was_refused(
        http: aiohttp.ClientSession) -> None:
    """What an operator reads when nothing listens at ``api_base_url``: the OS's reason."""
    closed = free_port()  # nothing listens on it
    adapter = unstarted(f"""
[[channels]]
type = "twilio"
name = "us-sms"
account_sid = "{SID}"
auth_token = "{TOKEN}"
from = "+15550001111"
api_base_url = "http://127.0.0.1:{closed}"
timeout = 1.0
""", http)
    with pytest.raises(AdapterError) as caught:
        await adapter.probe()
    assert f"Twilio at http://127.0.0.1:{closed} did not answer: Connection refused" \
        in str(caught.value)
