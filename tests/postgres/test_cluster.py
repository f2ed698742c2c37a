"""Three daemon processes on one PostgreSQL database, as a load balancer would spread them:
any instance takes hooks, each reply and webhook delivery goes out once, every instance's
feed shows every event at once with the same cursors, one IMAP session per mailbox."""

from __future__ import annotations

import asyncio
import collections
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.postgres.migrate import migration_scripts
from tests.conftest import WEBHOOK_SECRET, Daemon, Receiver, base_config, free_port
from tests.e2e.test_api_flow import read_sse
from tests.email.servers import Dovecot, mail
from tests.helpers import all_events, bearer, get_json, post_inbound, post_json, unique, wait_until
from tests.postgres.server import PgServer

pytestmark = pytest.mark.timeout(300)

MAILBOX_USER = "cluster"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """A Dovecot whose one mailbox every instance is configured to import."""
    root = Path(tempfile.mkdtemp(prefix="omnirelay-dovecot-"))
    server = Dovecot(root)
    server.add_user(MAILBOX_USER)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


class Cluster:
    """Three instances with the same config on one database and one blob directory."""

    def __init__(self, root: Path, dsn: str, receiver: Receiver, dovecot: Dovecot) -> None:
        self.root, self.dsn, self.receiver, self.dovecot = root, dsn, receiver, dovecot
        self.daemons: list[Daemon] = []

    def config(self, http_port: int, smtp_port: int) -> str:
        extra = f"""
            [[channels]]
            type = "api"
            name = "crm"
            secret = "crm-secret-0123456789"
            callback_url = "{self.receiver.url}/callback"
            [[channels]]
            type = "email"
            name = "mailbox"
            address = "mailbox@shop.example"
            imap = {{ host = "127.0.0.1", port = {self.dovecot.port}, security = "none", username = "{MAILBOX_USER}", password = "{self.dovecot.PASSWORD}", timeout = 5 }}
            [[webhooks]]
            name = "helpdesk"
            url = "{self.receiver.url}/webhook"
            secret = "{WEBHOOK_SECRET}"
            events = ["message.*"]
            """  # noqa: E501
        return base_config(self.root / "data", http_port, smtp_port, extra=extra,
                           store_url=self.dsn)

    async def start_one(self) -> Daemon:
        home = self.root / f"instance{len(self.daemons)}"
        home.mkdir()
        http_port = free_port()
        daemon = Daemon(home, self.config(http_port, free_port()), http_port)
        daemon.start()
        self.daemons.append(daemon)
        return daemon


@pytest.fixture(scope="module")
async def cluster(pg_server: PgServer, dovecot: Dovecot,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Three instances started at the same moment on an empty database (they migrate it
    once between them)."""
    receiver = Receiver()
    await receiver.start()
    group = Cluster(tmp_path_factory.mktemp("cluster"), pg_server.new_database(template=None),
                    receiver, dovecot)
    started = [await group.start_one() for _ in range(3)]
    await asyncio.gather(*(d.wait_ready(timeout=60) for d in started))
    yield group
    for daemon in group.daemons:
        code = await daemon.stop()
        assert code in (0, -9), daemon.logs()
    await receiver.stop()


def api_body(user: str, message_id: str, text: str = "hello") -> dict[str, object]:
    return {"message_id": message_id, "from": {"id": user, "name": "Kim"}, "text": text}


async def test_instances_started_together_migrated_the_empty_database_once(
        cluster: Cluster) -> None:
    import psycopg
    async with await psycopg.AsyncConnection.connect(cluster.dsn) as conn:
        cursor = await conn.execute("SELECT version, COUNT(*) FROM schema_migrations "
                                    "GROUP BY version ORDER BY version")
        rows = await cursor.fetchall()
    assert [r[0] for r in rows] == [v for v, _sql in migration_scripts()]
    assert all(r[1] == 1 for r in rows)


async def test_the_sse_stream_of_one_instance_shows_an_event_ingested_on_another(
        cluster: Cluster) -> None:
    a, b, _c = cluster.daemons
    async with aiohttp.ClientSession() as http:
        status, page = await get_json(http, f"{b.url}/v1/events", limit=1000)
        assert status == 200
        head = page["next"]
        stream = asyncio.create_task(read_sse(
            http, f"{b.url}/v1/events/stream", 3, {**bearer(), "Last-Event-ID": str(head)}))
        long_poll = asyncio.create_task(
            get_json(http, f"{cluster.daemons[2].url}/v1/events", after=head, wait=10))
        status, body = await post_inbound(http, a.url, api_body(unique("u"), unique("ext")))
        assert status == 201, body
        streamed = await asyncio.wait_for(stream, 10)
        assert [e["type"] for _, e in streamed] == [
            "customer.created", "conversation.opened", "message.received"]
        assert streamed[-1][1]["data"]["message"]["id"] == body["message"]["id"]
        status, polled = await asyncio.wait_for(long_poll, 10)
        assert [e["id"] for e in polled["events"]][:3] == [e["id"] for _, e in streamed]


async def test_concurrent_duplicate_deliveries_across_instances_store_one_message(
        cluster: Cluster) -> None:
    user, message_id = unique("u"), unique("ext")
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            post_inbound(http, d.url, api_body(user, message_id))
            for _ in range(8) for d in cluster.daemons))
        assert all(status in (200, 201) for status, _ in answers), answers
        assert [status for status, _ in answers].count(201) == 1
        assert len({body["message"]["id"] for _, body in answers}) == 1
        conversation = answers[0][1]["message"]["conversation_id"]
        status, page = await get_json(http, f"{cluster.daemons[1].url}/v1/conversations/"
                                      f"{conversation}/messages")
        assert status == 200
        assert len(page["messages"]) == 1


async def test_a_new_customer_writing_to_three_instances_at_once_has_one_conversation(
        cluster: Cluster) -> None:
    user = unique("u")
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            post_inbound(http, d.url, api_body(user, unique("ext"), f"message {i}"))
            for i in range(4) for d in cluster.daemons))
        assert all(status == 201 for status, _ in answers), answers
        assert len({body["message"]["customer_id"] for _, body in answers}) == 1
        assert len({body["message"]["conversation_id"] for _, body in answers}) == 1


async def test_every_instance_serves_the_same_feed_with_the_same_cursors(
        cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        posted = await asyncio.gather(*(post_inbound(http, d.url, api_body(unique("u"),
                                                                           unique("ext")))
                                        for d in cluster.daemons))
        assert [status for status, _body in posted] == [201] * 3, posted
        ids = {body["message"]["id"] for _status, body in posted}
        feeds: list[list[dict[str, Any]]] = []

        async def everywhere() -> bool:
            # An instance hears of another's commit by NOTIFY, a few ms after that answered.
            feeds[:] = [await all_events(http, d.url) for d in cluster.daemons]
            return all(ids <= {e["data"]["message"]["id"] for e in feed
                               if e["type"] == "message.received"} for feed in feeds)

        await wait_until(everywhere, timeout=15)
    seen = [[(e["seq"], e["id"]) for e in feed] for feed in feeds]
    assert seen[0] == seen[1] == seen[2]
    seqs = [int(s) for s, _ in seen[0]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_replies_spread_over_instances_are_each_delivered_once(cluster: Cluster) -> None:
    receiver = cluster.receiver
    async with aiohttp.ClientSession() as http:
        conversations = []
        for i in range(100):
            status, body = await post_inbound(
                http, cluster.daemons[i % 3].url, api_body(unique("u"), unique("ext")))
            assert status == 201, body
            conversations.append(body["message"]["conversation_id"])
        queued: list[str] = []
        gate = asyncio.Semaphore(24)

        async def reply(n: int) -> None:
            daemon = cluster.daemons[n % 3]
            async with gate:
                status, body = await post_json(
                    http, f"{daemon.url}/v1/conversations/{conversations[n % 100]}/messages",
                    {"text": f"reply {n}"})
            assert status == 202, body
            queued.append(body["id"])

        await asyncio.gather(*(reply(n) for n in range(1000)))

    def callbacks() -> collections.Counter[str]:
        return collections.Counter(r.json()["message"]["id"] for r in receiver.requests
                                   if r.path == "/callback")

    async def all_sent() -> bool:
        return set(queued) <= set(callbacks())

    await wait_until(all_sent, timeout=180, interval=0.5)
    counts = callbacks()
    assert all(counts[m] == 1 for m in queued), [m for m in queued if counts[m] != 1][:5]
    # Within a conversation, replies went out in the order they were queued.
    order: dict[str, list[str]] = collections.defaultdict(list)
    for request in receiver.requests:
        if request.path == "/callback":
            message = request.json()["message"]
            order[message["conversation_id"]].append(message["id"])
    assert all(ids == sorted(ids) for ids in order.values())


async def test_each_webhook_event_is_delivered_once_by_the_cluster(cluster: Cluster) -> None:
    receiver = cluster.receiver
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            post_inbound(http, d.url, api_body(unique("u"), unique("ext")))
            for _ in range(5) for d in cluster.daemons))
    ids = {body["message"]["id"] for _, body in answers}

    def received() -> list[str]:
        return [r.json()["data"]["message"]["id"] for r in receiver.requests
                if r.path == "/webhook" and r.json()["type"] == "message.received"]

    async def all_there() -> bool:
        return ids <= set(received())

    await wait_until(all_there, timeout=60, interval=0.2)
    counts = collections.Counter(received())
    assert all(counts[i] == 1 for i in ids)


async def test_the_mailbox_owner_killed_another_instance_takes_over_nothing_lost_or_doubled(
        cluster: Cluster) -> None:
    dovecot = cluster.dovecot
    first = [unique("m") + "@mail.example" for _ in range(3)]
    for message_id in first:
        await dovecot.append(MAILBOX_USER, mail(message_id))

    async with aiohttp.ClientSession() as http:
        async def imported(ids: list[str], daemon: Daemon) -> list[dict[str, object]] | None:
            events = await all_events(http, daemon.url)
            found = [e for e in events if e["type"] == "message.received"
                     and e["data"]["message"]["provider"]["message_id"] in ids]
            return found if len(found) >= len(ids) else None

        await wait_until(lambda: imported(first, cluster.daemons[0]), timeout=30, interval=0.2)
        owners = [d for d in cluster.daemons if "singleton.owned" in d.logs()]
        assert len(owners) == 1, [d.logs()[-2000:] for d in cluster.daemons]
        owner = owners[0]
        owner.kill()  # kill -9: the session and its advisory lock end with the process

        later = [unique("m") + "@mail.example" for _ in range(3)]
        for message_id in later:
            await dovecot.append(MAILBOX_USER, mail(message_id))
        survivor = next(d for d in cluster.daemons if d is not owner)
        found = await wait_until(lambda: imported(first + later, survivor), timeout=30,
                                 interval=0.2)
        counts = collections.Counter(e["data"]["message"]["provider"]["message_id"]
                                     for e in found)
        assert all(counts[m] == 1 for m in first + later), counts
        assert sum("singleton.owned" in d.logs() for d in cluster.daemons if d is not owner) == 1
