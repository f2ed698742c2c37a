"""Route families outside /hooks and the stop signal: open sockets close promptly on stop."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from adapters.registry import ADAPTERS
from adapters.testing import SocketAdapter
from tests.adapters.conftest import SHUTDOWN_TIMEOUT, MakeGateway


class SameSocketAdapter(SocketAdapter):
    """A second type in the same family, so two accounts can claim one path."""

    type = "sockets2"


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test adapters, registered like real ones for the length of a test."""
    monkeypatch.setitem(ADAPTERS, SocketAdapter.type, SocketAdapter)
    monkeypatch.setitem(ADAPTERS, SameSocketAdapter.type, SameSocketAdapter)


async def test_an_open_websocket_closes_at_once_when_the_daemon_stops(
        make_gateway: MakeGateway) -> None:
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


async def test_a_path_another_account_serves_is_refused(make_gateway: MakeGateway) -> None:
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
