"""Identity kinds follow the adapter registry: a channel brings its kinds by declaring them.

The API's validation, the OpenAPI enum and patterns, and where a reply goes all follow what
registered adapters declare; nothing in the core lists the kinds.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from adapters.base import OutboundMessage
from adapters.registry import ADAPTERS, identity_kinds
from adapters.testing import PigeonAdapter
from tests.adapters.conftest import TOKEN, MakeGateway

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHANNELS = ('[[channels]]\ntype = "api"\nname = "crm"\n'
            '[[channels]]\ntype = "pigeon"\nname = "loft"\n')


@pytest.fixture
def pigeons(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pigeon post, registered like a real adapter for the length of a test."""
    monkeypatch.setitem(ADAPTERS, PigeonAdapter.type, PigeonAdapter)


async def new_customer(http: aiohttp.ClientSession, base: str) -> str:
    """A customer, made as integrators make them: a message on the API channel."""
    async with http.post(f"{base}/hooks/api/crm/messages", headers=AUTH, json={
            "message_id": "m-1", "from": {"id": "u-42", "name": "Kim"},
            "text": "Where is my parcel?"}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["message"]["customer_id"])


async def openapi(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/openapi.json", headers=AUTH) as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


def identity_query(document: dict[str, Any]) -> re.Pattern[str]:
    [identity] = document["paths"]["/v1/customers"]["get"]["parameters"]
    return re.compile(identity["schema"]["pattern"])


async def test_a_new_channels_kind_is_taken_by_the_api_and_listed_in_openapi(
        pigeons: None, make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(CHANNELS)
    base = f"http://127.0.0.1:{gateway.bound_port}"
    assert "pigeon" in identity_kinds()
    async with aiohttp.ClientSession() as http:
        customer_id = await new_customer(http, base)
        async with http.post(f"{base}/v1/customers/{customer_id}/identities", headers=AUTH,
                             json={"kind": "pigeon", "address": " coop-7 "}) as response:
            assert response.status == 200, await response.text()
            identities = (await response.json())["identities"]
        assert {"pigeon": "coop-7"}.items() <= {i["kind"]: i["address"]
                                                for i in identities}.items()
        async with http.get(f"{base}/v1/customers", headers=AUTH,
                            params={"identity": "pigeon:coop-7"}) as response:
            assert response.status == 200
            assert [c["id"] for c in (await response.json())["customers"]] == [customer_id]

        document = await openapi(http, base)
    identity_in = document["components"]["schemas"]["IdentityInput"]
    # Every registered adapter's kinds plus the test's own (other channels add theirs).
    assert identity_in["properties"]["kind"]["enum"] == sorted({*identity_kinds(), "pigeon"})
    assert Draft202012Validator(identity_in).is_valid({"kind": "pigeon", "address": "coop-7"})
    assert not Draft202012Validator(identity_in).is_valid({"kind": "pigeon", "address": " "})
    assert identity_query(document).search("pigeon:coop-7")


async def test_a_kind_no_registered_adapter_declares_is_refused_with_the_list(
        make_gateway: MakeGateway) -> None:
    gateway = await make_gateway('[[channels]]\ntype = "api"\nname = "crm"\n')
    base = f"http://127.0.0.1:{gateway.bound_port}"
    async with aiohttp.ClientSession() as http:
        customer_id = await new_customer(http, base)
        async with http.post(f"{base}/v1/customers/{customer_id}/identities", headers=AUTH,
                             json={"kind": "pigeon", "address": "coop-7"}) as response:
            assert response.status == 422
            error = (await response.json())["error"]
        assert error["details"]["kinds"] == list(identity_kinds())
        assert "kind must be one of email, external, phone" in error["message"]
        async with http.get(f"{base}/v1/customers", headers=AUTH,
                            params={"identity": "pigeon:coop-7"}) as response:
            assert response.status == 422
        document = await openapi(http, base)
    enum = document["components"]["schemas"]["IdentityInput"]["properties"]["kind"]["enum"]
    assert enum == list(identity_kinds()) and "pigeon" not in enum
    assert not identity_query(document).search("pigeon:coop-7")


async def test_a_message_on_a_channel_goes_to_the_identity_kind_its_adapter_reaches(
        pigeons: None, make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(CHANNELS)
    base = f"http://127.0.0.1:{gateway.bound_port}"
    adapter = gateway.adapters[("pigeon", "loft")]
    assert isinstance(adapter, PigeonAdapter)
    sent: asyncio.Queue[OutboundMessage] = asyncio.Queue()
    adapter.on_send = sent.put_nowait
    async with aiohttp.ClientSession() as http:
        customer_id = await new_customer(http, base)
        # No pigeon identity yet: the customer cannot be reached on the pigeon channel.
        async with http.post(f"{base}/v1/customers/{customer_id}/messages", headers=AUTH,
                             json={"channel": "pigeon", "text": "Your parcel flies"}
                             ) as response:
            assert response.status == 409
            assert "no identity reachable on channel 'pigeon'" in \
                (await response.json())["error"]["message"]
        async with http.post(f"{base}/v1/customers/{customer_id}/identities", headers=AUTH,
                             json={"kind": "pigeon", "address": "coop-7"}) as response:
            assert response.status == 200
        async with http.post(f"{base}/v1/customers/{customer_id}/messages", headers=AUTH,
                             json={"channel": "pigeon", "text": "Your parcel flies"}
                             ) as response:
            assert response.status == 202, await response.text()
            queued = await response.json()
        # The pigeon identity is the customer's newest, but the API channel reaches only
        # external ids: a message there still goes to u-42.
        async with http.post(f"{base}/v1/customers/{customer_id}/messages", headers=AUTH,
                             json={"channel": "api", "text": "Also by API"}) as response:
            assert response.status == 202, await response.text()
            on_api = await response.json()

    assert (queued["to"]["kind"], queued["to"]["address"]) == ("pigeon", "coop-7")
    assert (queued["from"]["kind"], queued["from"]["address"]) == ("pigeon", "loft:loft")
    assert (on_api["to"]["kind"], on_api["to"]["address"]) == ("external", "u-42")
    delivered = await asyncio.wait_for(sent.get(), 10)
    assert (delivered.channel, delivered.to.kind, delivered.to.address) == (
        "pigeon", "pigeon", "coop-7")
