"""An in-process gateway for adapter tests: real store, real HTTP listener on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import Unauthorized
from gateway.store.base import IngestResult
from normalizer.model import InboundMessage

TOKEN = "adapter-test-token-0123456789"
SHUTDOWN_TIMEOUT = 60.0
MakeGateway = Callable[[str], Awaitable[Gateway]]


async def refuse_ingest(inbound: InboundMessage) -> IngestResult:
    """Nothing reaches ingest in tests that use it."""
    raise AssertionError(f"unexpected ingest of {inbound.provider_message_id}")


def refuse_token(request: web.Request, scope: str) -> None:
    """No bearer token is valid here."""
    raise Unauthorized("missing or invalid bearer token")


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
    """Start a gateway with the given ``[[channels]]`` tables; it is stopped after the test."""
    started: list[Gateway] = []

    async def make(channels: str) -> Gateway:
        config = parse_config(f"""
[server]
listen = "127.0.0.1:0"
shutdown_timeout = {SHUTDOWN_TIMEOUT}
[store]
data_dir = "{tmp_path}"
synchronous = "NORMAL"
[[tokens]]
name = "admin"
token = "{TOKEN}"
scopes = ["admin"]
{channels}
""")
        gateway = Gateway(config)
        started.append(gateway)
        await gateway.start()
        return gateway

    yield make
    for gateway in started:
        await gateway.stop()
