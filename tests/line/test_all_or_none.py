"""A LINE webhook's events are committed together: all of them, or none."""

from __future__ import annotations

import pytest

from adapters.line import LineAdapter
from gateway.errors import OmnirelayError
from normalizer.model import InboundMessage, Party
from tests.adapters.conftest import MakeGateway, make_gateway  # noqa: F401 - the fixture

ACCOUNT = """
[[channels]]
type = "line"
name = "shop"
channel_secret = "secret-0123456789"
channel_access_token = "token-0123456789"
api_base_url = "http://127.0.0.1:9"
data_api_base_url = "http://127.0.0.1:9"
"""


def message(message_id: str, **content: object) -> InboundMessage:
    return InboundMessage("line", "shop", message_id, Party("line", "U-batch"), message_id,
                          content=content or None)


async def test_one_event_that_cannot_be_stored_stores_none_and_the_redelivery_stores_all(
        make_gateway: MakeGateway) -> None:  # noqa: F811 - the imported fixture
    gateway = await make_gateway(ACCOUNT)
    adapter = gateway.adapters[("line", "shop")]
    assert isinstance(adapter, LineAdapter)
    broken = message("m-2", unserializable=object())  # fails inside the transaction
    with pytest.raises((TypeError, OmnirelayError)):
        await adapter.ingest_all([message("m-1"), broken, message("m-3")])
    # m-1 was undone with the rest: no message, conversation or event of it.
    assert await gateway.store.list_conversations(status=None, customer_id=None, after=None,
                                                  limit=10) == []
    assert (await gateway.store.events_after(0, 10)).bodies == []
    results = await adapter.ingest_all([message("m-1"), message("m-2"), message("m-3")])
    assert [r.created for r in results] == [True, True, True]
    again = await adapter.ingest_all([message("m-1"), message("m-2"), message("m-3")])
    assert [r.created for r in again] == [False, False, False]
    conversations = await gateway.store.list_conversations(status=None, customer_id=None,
                                                           after=None, limit=10)
    [conversation] = conversations
    stored = await gateway.store.list_messages(conversation["id"], None, 10)
    assert [m["text"] for m in stored] == ["m-1", "m-2", "m-3"]
