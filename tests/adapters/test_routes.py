"""Route families outside /hooks and the stop signal: open sockets close promptly on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from adapters.registry import ADAPTERS
from adapters.testing import SocketAdapter
from gateway.config import parse_config
from gateway.daemon import Gateway

TOKEN = "route-test-token-0123456789"
SHUTDOWN_TIMEOUT = 60.0


class SameSocketAdapter(SocketAdapter):
    """A second type in the same family, so two accounts can claim one path."""

    type = "sockets2"


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test adapters, registered like real ones for the length of a test."""
    monkeypatch.setitem(ADAPTERS, SocketAdapter.type, SocketAdapter)
    monkeypatch.setitem(ADAPTERS, SameSocketAdapter.type, SameSocketAdapter)


@pytest.fixture
async def make_gateway(tmp_path: Path, registered: None
                       ) -> AsyncIterator[Callable[[str], asyncio.Future[Gateway]]]:
    """Start an in-process gateway with the given ``[[channels]]`` tables; stopped after."""
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

    yield make  # type: ignore[misc]
    for gateway in started:
        await gateway.stop()


async def test_an_open_websocket_closes_at_once_when_the_daemon_stops(make_gateway) -> None:
    gateway = await make_gateway('[[channels]]\ntype = "sockets"\nname = "rec"\n')
    async with aiohttp.ClientSession() as client, client.ws_connect(
            f"http://127.0.0.1:{gateway.bound_port}/sockets/rec/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"

        stopping = asyncio.create_task(gateway.stop())
        frame = await ws.receive(timeout=10)
        assert frame.type is aiohttp.WSMsgType.CLOSE
        assert frame.data == aiohttp.WSCloseCode.GOING_AWAY
        # Well before shutdown_timeout (60 s): the socket no longer holds the drain.
        await asyncio.wait_for(stopping, SHUTDOWN_TIMEOUT / 4)
    assert gateway.stopping.is_set()


async def test_a_path_another_account_serves_is_refused(make_gateway) -> None:
    gateway = await make_gateway('[[channels]]\ntype = "sockets"\nname = "rec"\n'
                                 '[[channels]]\ntype = "sockets2"\nname = "rec"\n'
                                 '[[channels]]\ntype = "sockets"\nname = "other"\n')
    report = {(c["type"], c["name"]): c for c in gateway.channel_report()}
    assert report[("sockets", "rec")]["state"] == "running"
    assert report[("sockets", "other")]["state"] == "running"
    refused = report[("sockets2", "rec")]
    assert refused["state"] == "failed"
    assert "/sockets/rec/ws is already served by sockets account 'rec'" in refused["last_error"]

    base = f"http://127.0.0.1:{gateway.bound_port}"
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(f"{base}/sockets/other/ws") as ws:
            await ws.send_str("ping")
            assert (await ws.receive(timeout=10)).data == "ping"
        async with client.get(f"{base}/sockets/nobody/ws") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with client.post(f"{base}/sockets/rec/ws") as response:
            assert response.status == 405
