"""Web chat on two instances sharing one PostgreSQL database: a visitor's WebSocket is held
by the instance the browser connected to, a reply is sent by whichever instance claims it
from the outbox, and every push reaches the visitor's sockets live, once, wherever they
are; the browser's receipts are recorded by the instance holding its socket
(docs/webchat.md, "Several instances")."""

from __future__ import annotations

import asyncio
import collections
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import Daemon, base_config, free_port
from tests.helpers import TcpProxy, all_events, wait_until
from tests.postgres.server import PgServer
from tests.webchat.conftest import AUTH, Visitor, connect, get_json, reply

pytestmark = pytest.mark.timeout(180)


@dataclass
class Pair:
    """Instances A and B, the same config, one database, one blob directory."""

    a: Daemon
    b: Daemon
    origin: str  # the shop's origin, which the ``shop`` account allows

    def name(self, daemon: Daemon) -> str:
        return "A" if daemon is self.a else "B"


async def start_pair(root: Path, dsn: str, dsn_of_b: str | None = None) -> Pair:
    """A and B started at the same moment on an empty database: they migrate it and make
    the account's token secret between them (``dsn_of_b``: B's way to the same one)."""
    origin = f"http://127.0.0.1:{free_port()}"
    extra = f"""
        [[channels]]
        type = "webchat"
        name = "shop"
        allowed_origins = ["{origin}"]
        visitor_messages_per_minute = 600
        """
    daemons = []
    for n, url in enumerate((dsn, dsn_of_b or dsn)):
        home = root / f"instance{n}"
        home.mkdir()
        port = free_port()
        daemon = Daemon(home, base_config(root / "data", port, free_port(), extra=extra,
                                          store_url=url), port)
        daemon.start()
        daemons.append(daemon)
    await asyncio.gather(*(d.wait_ready(timeout=60) for d in daemons))
    return Pair(daemons[0], daemons[1], origin)


async def stop_pair(pair: Pair) -> None:
    for daemon in (pair.a, pair.b):
        code = await daemon.stop()
        assert code == 0, daemon.logs()[-3000:]


@pytest.fixture(scope="module")
async def pair(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Pair]:
    """A and B on one database."""
    pair = await start_pair(tmp_path_factory.mktemp("webchat-pair"),
                            pg_server.new_database(template=None))
    yield pair
    await stop_pair(pair)


def cid() -> str:
    """A fresh client id, as the widget makes one."""
    return uuid.uuid4().hex


def sender(pair: Pair, message_id: str) -> str | None:
    """Which instance's outbox sent the message (its ``outbox.sent`` log line)."""
    for daemon in (pair.a, pair.b):
        for line in daemon.logs().splitlines():
            if message_id in line and '"outbox.sent"' in line:
                entry = orjson.loads(line)
                if entry.get("message_id") == message_id:
                    return pair.name(daemon)
    return None


async def counters(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, int]:
    """The ``shop`` account's counters on one instance."""
    channels = await get_json(http, f"{daemon.url}/v1/channels")
    return dict(next(c for c in channels["channels"] if c["name"] == "shop")["counters"])


async def statuses(http: aiohttp.ClientSession, daemon: Daemon, message_id: str) -> list[str]:
    """The ``message.status`` events of one message, in feed order."""
    return [e["data"]["message"]["status"] for e in await all_events(http, daemon.url)
            if e["type"] == "message.status" and e["data"]["message"]["id"] == message_id]


async def exchange(http: aiohttp.ClientSession, pair: Pair, visitors: list[Visitor],
                   via: Daemon, conversation: str, text: str) -> str:
    """An agent's reply through ``via``'s API: it must be the next message frame on every
    one of ``visitors``' sockets; the first acknowledges it, and ``delivered`` must show in
    the feed. Returns the instance that sent it."""
    queued = await reply(http, via, conversation, text)
    for visitor in visitors:
        pushed = (await visitor.next("message"))["message"]
        assert pushed["id"] == queued["id"], pushed  # not an earlier one pushed twice
        assert pushed["text"] == text and pushed["direction"] == "outbound"
    await visitors[0].send({"type": "ack", "ids": [queued["id"]]})

    async def delivered() -> bool:
        return "delivered" in await statuses(http, pair.a, queued["id"])
    await wait_until(delivered, timeout=20)

    async def sent_by() -> str | None:
        return sender(pair, queued["id"])
    found: str = await wait_until(sent_by, timeout=10)
    return found


async def only_once(visitors: list[Visitor]) -> None:
    """Nothing more is on its way (a ping's pong came after it), and every message frame
    each socket got names a different message."""
    for visitor in visitors:
        await visitor.send({"type": "ping"})
        await visitor.next("pong")
        ids = [f["message"]["id"] for f in visitor.frames if f["type"] == "message"]
        assert [i for i, n in collections.Counter(ids).items() if n > 1] == []


async def test_replies_sent_by_either_instance_reach_the_socket_held_by_b_once(
        pair: Pair) -> None:
    async with aiohttp.ClientSession() as http:
        visitor = await connect(http, pair.b, "shop", pair.origin)
        mine = (await visitor.say("Is the blue one in stock?", cid()))["message"]
        conversation = mine["conversation_id"]
        relayed_before = (await counters(http, pair.b))["relayed"]
        senders: list[str] = []
        # The instance whose API queued a reply usually claims it first; go on until A
        # has sent one to B's socket, and B one of its own.
        for n in range(10):
            for via in (pair.a, pair.b):
                senders.append(await exchange(http, pair, [visitor], via, conversation,
                                              f"reply {n} through {pair.name(via)}"))
            if {"A", "B"} <= set(senders):
                break
        assert {"A", "B"} <= set(senders), senders
        await only_once([visitor])
        relayed = (await counters(http, pair.b))["relayed"] - relayed_before
        assert relayed == senders.count("A")  # A's sends came through the relay, B's not
        await visitor.ws.close()


async def test_a_reply_too_large_for_a_notification_is_read_from_the_store(
        pair: Pair) -> None:
    text = "큰 답장입니다. " * 1200  # ~20 KB of UTF-8: far over NOTIFY's 8000 bytes
    async with aiohttp.ClientSession() as http:
        visitor = await connect(http, pair.b, "shop", pair.origin)
        conversation = (await visitor.say("Tell me everything", cid()))["message"][
            "conversation_id"]
        senders = []
        for _ in range(5):
            senders.append(await exchange(http, pair, [visitor], pair.a, conversation, text))
            if "A" in senders:
                break
        assert "A" in senders, senders
        await only_once([visitor])
        await visitor.ws.close()


async def test_tabs_on_both_instances_get_the_visitors_messages_and_the_replies(
        pair: Pair) -> None:
    async with aiohttp.ClientSession() as http:
        tab_b = await connect(http, pair.b, "shop", pair.origin)
        # The token B issued is good on A: one secret for the account on every instance.
        tab_a = await connect(http, pair.a, "shop", pair.origin, token=tab_b.welcome["token"])
        assert tab_a.welcome["visitor"] == tab_b.welcome["visitor"]
        said = await tab_a.say("Do you ship to Busan?", client_id := cid())
        other = await tab_b.next("message")
        assert other["client_id"] == client_id
        assert other["message"]["id"] == said["message"]["id"]
        conversation = said["message"]["conversation_id"]
        for via in (pair.a, pair.b):
            await exchange(http, pair, [tab_b, tab_a], via, conversation,
                           f"Yes, through {pair.name(via)}")
        await only_once([tab_a, tab_b])
        for tab in (tab_a, tab_b):
            await tab.ws.close()


@pytest.mark.parametrize("how", ["api", "cli"])
async def test_an_erasure_makes_both_instances_forget_the_visitors_messages(
        pair: Pair, how: str) -> None:
    """A visitor's tabs on A and B each remember the visitor's message; the customer is
    erased through A's API (B hears it from A), or by ``omnirelay erase-customer`` from a
    shell while both run (both hear it). Both instances forget it: a tab sending it again
    is never answered with the erased message, it is stored anew, once."""
    async with aiohttp.ClientSession() as http:
        tab_b = await connect(http, pair.b, "shop", pair.origin)
        tab_a = await connect(http, pair.a, "shop", pair.origin, token=tab_b.welcome["token"])
        erased = (await tab_b.say("Call me on 010-0000-0000", client_id := cid()))["message"]
        assert (await tab_a.next("message"))["message"]["id"] == erased["id"]
        before = [(await counters(http, d))["forgotten"] for d in (pair.a, pair.b)]
        if how == "api":
            async with http.delete(f"{pair.a.url}/v1/customers/{erased['customer_id']}",
                                   headers=AUTH) as response:
                assert response.status == 200, await response.text()
        else:
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "erase-customer", erased["customer_id"],
                "--config", str(pair.a.config_path), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            output, _ = await command.communicate()
            assert command.returncode == 0, output.decode()

        async def forgotten() -> bool:
            now = [(await counters(http, d))["forgotten"] for d in (pair.a, pair.b)]
            return all(n > b for n, b in zip(now, before, strict=True))
        await wait_until(forgotten, timeout=20)
        again = (await tab_b.say("sent again", client_id))["message"]
        assert again["id"] != erased["id"] and again["text"] == "sent again"
        from_a = await tab_a.say("sent again from A", client_id)
        assert from_a["message"]["id"] == again["id"], from_a  # the new one, not the erased
        assert "010-0000-0000" not in str([tab_a.frames[-1], tab_b.frames[-1]])
        for tab in (tab_a, tab_b):
            await tab.ws.close()


async def test_a_reply_to_a_visitor_with_no_socket_anywhere_waits_in_the_history(
        pair: Pair) -> None:
    async with aiohttp.ClientSession() as http:
        visitor = await connect(http, pair.b, "shop", pair.origin)
        token = visitor.welcome["token"]
        conversation = (await visitor.say("I'll be back", cid()))["message"]["conversation_id"]
        await visitor.ws.close()
        before = [await counters(http, d) for d in (pair.a, pair.b)]
        queued = await reply(http, pair.a, conversation, "See you later")

        async def sent() -> bool:
            return await statuses(http, pair.b, queued["id"]) == ["sent"]
        await wait_until(sent, timeout=20)
        after = [await counters(http, d) for d in (pair.a, pair.b)]
        assert [c["relayed"] for c in after] == [c["relayed"] for c in before]
        assert [c["relay_failed"] for c in after] == [0, 0]
        for daemon in (pair.a, pair.b):
            back = await connect(http, daemon, "shop", pair.origin, token=token)
            [kept] = [m for m in back.history if m["id"] == queued["id"]]
            assert kept["text"] == "See you later" and kept["status"] == "sent"
            await back.ws.close()


async def test_a_reply_pushed_while_b_was_cut_off_from_the_database_reaches_b_s_socket(
        pg_server: PgServer, tmp_path: Path) -> None:
    """B loses its database connections (a network partition) while the agent's reply goes
    out through A: A's push reaches nobody on B, whose listener is down. Once B listens
    again it gives its open sockets what the visitors' history has and they were not given:
    the visitor sees the reply without reloading, once, and can acknowledge it."""
    dsn = pg_server.new_database(template=None)
    proxy = TcpProxy(pg_server.port)
    proxied = dsn.replace(f":{pg_server.port}/", f":{proxy.start()}/")
    pair = await start_pair(tmp_path, dsn, proxied)
    try:
        async with aiohttp.ClientSession() as http:
            visitor = await connect(http, pair.b, "shop", pair.origin)
            conversation = (await visitor.say("Where is my parcel?", cid()))["message"][
                "conversation_id"]
            proxy.cut()
            queued = await reply(http, pair.a, conversation, "It left our warehouse today")

            async def sent() -> bool:
                return await statuses(http, pair.a, queued["id"]) == ["sent"]
            await wait_until(sent, timeout=20)  # by A: B can reach nothing now
            proxy.restore()
            pushed = (await visitor.next("message", timeout=30))["message"]
            assert pushed["id"] == queued["id"]
            assert pushed["text"] == "It left our warehouse today"
            await visitor.send({"type": "ack", "ids": [queued["id"]]})

            async def delivered() -> bool:
                return "delivered" in await statuses(http, pair.a, queued["id"])
            await wait_until(delivered, timeout=20)
            await only_once([visitor])
            assert (await counters(http, pair.b))["caught_up"] == 1
            assert sender(pair, queued["id"]) == "A"
            await visitor.ws.close()
    finally:
        await stop_pair(pair)
        proxy.stop()
