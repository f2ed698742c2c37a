"""An in-process gateway for adapter tests: real store, real HTTP listener on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway

TOKEN = "adapter-test-token-0123456789"
SHUTDOWN_TIMEOUT = 60.0
MakeGateway = Callable[[str], Awaitable[Gateway]]


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
