"""The adapter contract, checked over every registered adapter.

Each adapter starts from its config class's ``example`` (the smallest valid table) and must:
declare its channel facts; report a missing required key or an unknown key as a config error
naming the key, its line and a hint; refuse a forged or unsigned hook with 401/403 and store
nothing; answer a send with a typed result or a typed send error; show health in the
contract's shape; start and stop idempotently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson
import pytest

from adapters.base import (
    AdapterConfig,
    AdapterContext,
    AdapterHealth,
    AdapterState,
    ChannelAdapter,
    OutboundMessage,
    SendResult,
)
from adapters.registry import ADAPTERS, identity_kinds
from adapters.testing import MemoryStore
from gateway.config import COMMON_CHANNEL_KEYS, ChannelConfig, parse_config
from gateway.errors import ConfigErrors, SendError
from gateway.supervisor import LoopHealth
from normalizer.model import Party
from tests.adapters.conftest import MakeGateway, refuse_ingest, refuse_token

TYPES = sorted(ADAPTERS)
CONTRACT_IDENTITY_KINDS = {"email", "phone", "telegram", "messenger", "instagram", "line",
                           "navertalk", "whatsapp", "webchat", "external"}
ADDRESSES = {"email": "c@customer.example", "phone": "+15550001111"}


def channels_toml(type_: str, options: Mapping[str, object]) -> str:
    """One ``[[channels]]`` table (values written as JSON, which TOML reads the same)."""
    lines = ["[[channels]]", f'type = "{type_}"', 'name = "acct"']
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def example(type_: str) -> Mapping[str, object]:
    """The adapter's smallest valid table."""
    return ADAPTERS[type_].config_class.example


def parse_channel(type_: str, options: Mapping[str, object]) -> ChannelConfig:
    """Parse one account the way the daemon does."""
    return parse_config(channels_toml(type_, options), environ={}).channels[0]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the adapter (nothing in these tests reaches a provider)."""
    async with aiohttp.ClientSession() as session:
        yield session


def make_adapter(type_: str, http: aiohttp.ClientSession) -> ChannelAdapter:
    """The adapter at its example config, outside a daemon."""
    channel = parse_channel(type_, example(type_))
    ctx = AdapterContext(ingest=refuse_ingest, http=http, public_url="http://127.0.0.1",
                         authorize=refuse_token, store=MemoryStore())
    return ADAPTERS[type_](channel.name, channel.options, ctx)


@pytest.mark.parametrize("type_", TYPES)
def test_the_adapter_declares_its_channel_facts(type_: str) -> None:
    cls = ADAPTERS[type_]
    assert cls.type == type_
    assert cls.channels and all(isinstance(c, str) for c in cls.channels)
    assert cls.identity_kinds and cls.identity_kinds <= CONTRACT_IDENTITY_KINDS
    assert set(cls.identity_kinds) <= set(identity_kinds())
    # Every channel says which of those kinds a reply can go to (the store routes by it).
    assert set(cls.channel_identity_kinds) == set(cls.channels)
    for kinds in cls.channel_identity_kinds.values():
        assert kinds and set(kinds) <= cls.identity_kinds
    assert issubclass(cls.config_class, AdapterConfig)


def test_the_registry_exposes_the_union_of_identity_kinds() -> None:
    union = set().union(*(cls.identity_kinds for cls in ADAPTERS.values()))
    assert identity_kinds() == tuple(sorted(union))
    assert {"email", "external"} <= union


@pytest.mark.parametrize("type_", TYPES)
def test_the_example_config_parses(type_: str) -> None:
    channel = parse_channel(type_, example(type_))
    assert isinstance(channel.options, ADAPTERS[type_].config_class)
    assert channel.send_concurrency == 4 and channel.send_rate is None


@pytest.mark.parametrize("type_", TYPES)
def test_a_missing_required_key_is_an_error_naming_it(type_: str) -> None:
    for key in example(type_):
        options = {k: v for k, v in example(type_).items() if k != key}
        with pytest.raises(ConfigErrors) as caught:
            parse_channel(type_, options)
        errors = {e.key: e for e in caught.value.errors}
        assert f"channels[0].{key}" in errors, caught.value.errors
        error = errors[f"channels[0].{key}"]
        assert "required" in error.message and error.line == 1 and error.hint


@pytest.mark.parametrize("type_", TYPES)
def test_unknown_and_mistyped_keys_are_errors_naming_them(type_: str) -> None:
    options = {**example(type_), "send_concurency": 2, "send_rate": "fast"}
    with pytest.raises(ConfigErrors) as caught:
        parse_channel(type_, options)
    errors = {e.key: e for e in caught.value.errors}
    assert "did you mean 'send_concurrency'" in errors["channels[0].send_concurency"].hint
    assert errors["channels[0].send_rate"].message == "must be a number, got a string"
    assert errors["channels[0].send_rate"].line is not None


@pytest.mark.parametrize("type_", TYPES)
def test_send_limits_are_parsed_once_for_every_type(type_: str) -> None:
    channel = parse_channel(type_, {**example(type_), "send_concurrency": 2, "send_rate": 5})
    assert (channel.send_concurrency, channel.send_rate) == (2, 5.0)
    with pytest.raises(ConfigErrors) as caught:
        parse_channel(type_, {**example(type_), "send_concurrency": 0})
    assert [e.key for e in caught.value.errors] == ["channels[0].send_concurrency"]
    own_keys = getattr(ADAPTERS[type_].config_class, "__dataclass_fields__", {})
    assert not set(own_keys) & set(COMMON_CHANNEL_KEYS)  # read once, by ChannelConfig


@pytest.mark.parametrize("type_", TYPES)
async def test_forged_or_unsigned_hooks_are_refused_and_store_nothing(
        type_: str, make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(channels_toml(type_, example(type_)))
    adapter = gateway.adapters[(type_, "acct")]
    if not adapter.route_table():
        pytest.skip(f"{type_} serves no HTTP hooks")
    body = orjson.dumps({"message_id": "forged-1", "from": {"id": "u-1"}, "text": "hi"})
    attempts = [
        {},  # unsigned
        {"Omnirelay-Signature": "t=1700000000,v1=" + "0" * 64},  # forged signature
        {"Authorization": "Bearer not-a-valid-token-0123456789"},  # forged token
    ]
    async with aiohttp.ClientSession() as client:
        for path, methods in adapter.route_table().items():
            for method in methods:
                url = f"http://127.0.0.1:{gateway.bound_port}/hooks/{type_}/acct{path}"
                for headers in attempts:
                    async with client.request("POST" if method == "*" else method, url,
                                              data=body, headers={
                                                  "Content-Type": "application/json",
                                                  **headers}) as response:
                        assert response.status in (401, 403), (method, path, headers)
                        error = (await response.json())["error"]
                        assert error["code"] and error["message"]
    assert await gateway.store.head_seq() == 0
    assert await gateway.store.list_conversations(status=None, customer_id=None, after=None,
                                                  limit=10) == []
    assert adapter.counters["received"] == 0


@pytest.mark.parametrize("type_", TYPES)
async def test_send_answers_with_a_typed_result_or_a_typed_error(
        type_: str, http: aiohttp.ClientSession) -> None:
    adapter = make_adapter(type_, http)
    await adapter.start()
    channel = sorted(adapter.channels)[0]
    kind = adapter.channel_identity_kinds[channel][0]
    message = OutboundMessage(
        id="msg_01CONTRACT", conversation_id="cnv_01CONTRACT", customer_id="cus_01CONTRACT",
        channel=channel, account="acct", to=Party(kind, ADDRESSES.get(kind, "u-42")),
        sender=adapter.sender(channel), text="Your order shipped.")
    outcome: SendResult | SendError
    try:
        outcome = await adapter.send(message)
    except SendError as exc:  # anything else would be an untyped failure: the test fails
        outcome = exc
    finally:
        await adapter.stop()
    if isinstance(outcome, SendError):
        assert outcome.code and outcome.message  # the outbox retries or fails by its type
    else:
        assert isinstance(outcome, SendResult) and outcome.status
        assert outcome.provider_message_id is None or isinstance(
            outcome.provider_message_id, str)


@pytest.mark.parametrize("type_", TYPES)
async def test_health_has_the_contract_shape_and_start_stop_are_idempotent(
        type_: str, http: aiohttp.ClientSession) -> None:
    adapter = make_adapter(type_, http)
    assert adapter.health().state is AdapterState.NEW
    await adapter.start()
    await adapter.start()
    health = adapter.health()
    assert isinstance(health, AdapterHealth)
    assert health.state in (AdapterState.RUNNING, AdapterState.DEGRADED)
    assert {"received", "duplicates", "sent", "send_errors"} <= set(health.counters)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in health.counters.items())
    assert all(isinstance(loop, LoopHealth) for loop in health.loops)
    await adapter.stop()
    await adapter.stop()
    assert adapter.health().state is AdapterState.STOPPED
    with pytest.raises(RuntimeError):
        await adapter.start()
