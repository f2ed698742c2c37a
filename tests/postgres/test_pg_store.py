"""The PostgreSQL store where it differs from SQLite: several stores (instances) on one
database: leases, concurrent writers, the feed seen by every instance, the migration lock,
singleton loops; and the SQL translation the shared jobs go through."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path

import orjson
import psycopg
import pytest

from gateway.automation.jobs import _send_automatic
from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.store import base
from gateway.store.base import OutboundRequest, Route
from gateway.store.migrate import migration_scripts as sqlite_migrations
from gateway.store.postgres import PostgresStore, singleton
from gateway.store.postgres.conn import translate
from gateway.store.postgres.migrate import migration_scripts as pg_migrations
from normalizer.model import InboundMessage, Party, RemoteAttachment
from tests.postgres.server import PgServer
from tests.store.test_interface import ROLES, _methods

ROUTE = Route("api", "a", Party("external", "omnirelay:a"), ("external",))

OpenStores = Callable[..., Awaitable[list[PostgresStore]]]


@pytest.fixture
async def stores(pg_server: PgServer, tmp_path: Path) -> AsyncIterator[OpenStores]:
    """``await stores(n)``: n stores (as n instances would) on one fresh database."""
    opened: list[PostgresStore] = []

    async def open_stores(count: int, dsn: str | None = None,
                          **kwargs: object) -> list[PostgresStore]:
        url = dsn or pg_server.fresh_database()
        made = [PostgresStore(StoreConfig(url=url, data_dir=tmp_path / f"i{i}"), **kwargs)
                for i in range(count)]
        await asyncio.gather(*(s.open() for s in made))
        opened.extend(made)
        return made

    yield open_stores
    for store in opened:
        await store.close()


def inbound(provider_id: str, sender: str = "u1", **kwargs: object) -> InboundMessage:
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender), text="hi", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.__name__)
def test_the_postgres_store_implements_each_role_with_the_declared_signatures(
        role: type) -> None:
    for name in _methods(role):
        declared = inspect.signature(getattr(role, name))
        assert inspect.signature(getattr(PostgresStore, name)) == declared, name
        assert (inspect.iscoroutinefunction(getattr(PostgresStore, name))
                == inspect.iscoroutinefunction(getattr(role, name))), name
    assert isinstance(PostgresStore.__dict__.get("run_owned"), Callable)  # type: ignore[arg-type]
    assert base.Store  # every role above is the Store


def test_sqlite_spellings_become_postgres_ones() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c = '?' AND d LIKE 'x%'") == (
        "SELECT a FROM t WHERE b = %s AND c = '?' AND d LIKE 'x%%'", None)
    assert translate("UPDATE t SET a = CASE WHEN b = ?1 THEN NULL END, c = ?2 WHERE d = ?1") == (
        "UPDATE t SET a = CASE WHEN b = %s THEN NULL END, c = %s WHERE d = %s", (0, 1, 0))
    sql, _ = translate("INSERT OR IGNORE INTO t (a) VALUES (?)")
    assert sql == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    sql, _ = translate("DELETE FROM k WHERE json_extract(response, '$.id') IN (?)")
    assert sql == "DELETE FROM k WHERE (response::jsonb ->> 'id') IN (%s)"
    # The metrics' upserts and reads (gateway/store/jobs/stats.py, gateway/stats/query.py).
    sql, _ = translate("INSERT INTO s (k, n, b) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET "
                       "n = n + excluded.n, b = CAST(b || excluded.b AS BLOB)")
    assert sql.endswith("DO UPDATE SET n = s.n + excluded.n, "
                        "b = CAST(s.b || excluded.b AS BYTEA)")
    sql, _ = translate("SELECT k, CAST(group_concat(b, '') AS BLOB) FROM s GROUP BY k")
    assert sql == "SELECT k, string_agg(b, ''::bytea) FROM s GROUP BY k"
    sql, _ = translate("SELECT SUM(n) FROM (SELECT n FROM s UNION ALL SELECT n FROM t) GROUP BY k")
    assert sql == ("SELECT SUM(n) FROM (SELECT n FROM s UNION ALL SELECT n FROM t) "
                   "AS subquery_0 GROUP BY k")
    sql, _ = translate("SELECT q.n FROM (SELECT n FROM s) q")
    assert sql == "SELECT q.n FROM (SELECT n FROM s) q"
    sql, _ = translate("SELECT n FROM (SELECT n FROM (SELECT n FROM s)) WHERE n > ?")
    assert sql == ("SELECT n FROM (SELECT n FROM (SELECT n FROM s) AS subquery_1) "
                   "AS subquery_0 WHERE n > %s")


def test_every_sqlite_migration_has_a_postgresql_one_of_the_same_number_and_name() -> None:
    # A SQLite-only migration leaves PostgreSQL without its tables (and omnirelay migrate
    # refuses a source column the target has no place for).
    def names(folder: str) -> list[str]:
        return sorted(p.name for p in (resources.files("gateway.store") / folder).iterdir()
                      if p.name.endswith(".sql"))
    assert names("migrations_pg") == names("migrations")
    assert [v for v, _ in pg_migrations()] == [v for v, _ in sqlite_migrations()]


async def test_stores_opened_at_once_on_an_empty_database_migrate_it_once(
        pg_server: PgServer, stores: OpenStores) -> None:
    dsn = pg_server.new_database(template=None)
    await stores(3, dsn)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [v for v, _sql in sqlite_migrations()]


async def test_an_event_committed_by_one_instance_reaches_the_others_feed_at_once(
        stores: OpenStores) -> None:
    heads: list[int] = []
    arrived = asyncio.Event()

    def committed(seq: int) -> None:
        heads.append(seq)
        arrived.set()

    a, = await stores(1)
    b, = await stores(1, a.url, on_commit=committed)
    result = await a.ingest(inbound("m1"), [])
    await asyncio.wait_for(arrived.wait(), 5)
    assert heads[-1] == await a.head_seq() == 3
    page = await b.events_after(0, 10)
    assert page.seqs == [1, 2, 3]
    assert b"message.received" in page.bodies[-1]
    assert result.message["id"].encode() in page.bodies[-1]


async def test_two_instances_storing_the_same_messages_at_once_store_each_once(
        stores: OpenStores) -> None:
    a, b = await stores(2)
    messages = [inbound(f"m{i}", sender=f"u{i % 5}") for i in range(40)]
    results = await asyncio.gather(*(s.ingest(m, []) for m in messages for s in (a, b)))
    assert sum(r.created for r in results) == 40
    for message in messages:
        ids = {r.message["id"] for r in results
               if r.message["provider"]["message_id"] == message.provider_message_id}
        assert len(ids) == 1
    customers = {r.message["customer_id"] for r in results}
    conversations = {r.message["conversation_id"] for r in results}
    assert len(customers) == 5 and len(conversations) == 5
    page = await a.events_after(0, 1000)
    assert page.seqs == list(range(1, 5 * 2 + 40 + 1))  # gapless, in order


async def test_two_instances_storing_the_same_all_or_none_batches_store_each_once(
        stores: OpenStores) -> None:
    # A LINE webhook's events (ingest_all) delivered to two instances at once.
    a, b = await stores(2)
    batches = [[(inbound(f"m{n}-{i}", sender=f"u{n}"), []) for i in range(3)]
               for n in range(8)]
    results = await asyncio.gather(*(s.ingest_all(batch) for batch in batches
                                     for s in (a, b)))
    for mine, theirs in zip(results[::2], results[1::2], strict=True):
        assert sorted([r.created for r in mine], reverse=True) in ([True] * 3, [False] * 3)
        assert [r.created for r in mine] == [not r.created for r in theirs]
        assert [r.message["id"] for r in mine] == [r.message["id"] for r in theirs]
    assert len({r.message["conversation_id"] for batch in results for r in batch}) == 8


async def test_an_outbox_claim_is_a_lease_another_instance_takes_when_it_runs_out(
        stores: OpenStores, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await stores(2)
    a.lease = b.lease = 0.5  # [store] claim_lease_seconds
    stored = await a.ingest(inbound("m1"), [])
    _status, reply = await a.enqueue_outbound(
        conversation_id=stored.message["conversation_id"], customer_id=None,
        request=OutboundRequest(text="hello"), routes=[ROUTE], idempotency=None)
    claimed, elsewhere = await asyncio.gather(a.claim_outbox(10), b.claim_outbox(10))
    assert len(claimed) + len(elsewhere) == 1  # SKIP LOCKED: one instance has it
    assert await b.claim_outbox(10) == []
    assert await b.recover_inflight() == 0  # a live lease is not taken back at start
    due = await b.next_outbox_due()
    assert due is not None and due <= time.time() + 0.5
    await asyncio.sleep(max(0.0, due - time.time()) + 0.05)
    (again,) = await b.claim_outbox(10)  # the first instance "died" holding it
    assert again.message["id"] == reply["id"] and again.attempts == 2
    await b.outbox_sent(reply["id"], "p-1")
    assert await a.claim_outbox(10) == []


async def test_two_instances_queue_one_automatic_send_per_key(stores: OpenStores) -> None:
    # Every instance's automation worker follows the same feed: both may queue the same
    # acknowledgement at the same moment. The send emits an event, so its batch holds the
    # feed_head lock: the second instance's batch waits, then finds the first's key.
    a, b = await stores(2)
    conversations = [(await a.ingest(inbound(f"m{i}", sender=f"u{i}"), [])).message[
        "conversation_id"] for i in range(12)]
    request = OutboundRequest(text="We got your message", automatic="acknowledgement")

    async def send(store: PostgresStore, conversation_id: str) -> dict[str, object] | None:
        keys = [(f"ack:{conversation_id}", None)]
        sent: dict[str, object] | None = await store.write(
            _send_automatic, conversation_id, request, [ROUTE], keys, None)
        return sent
    results = await asyncio.gather(*(send(store, cid) for cid in conversations
                                     for store in (a, b)))
    assert sum(r is not None for r in results) == len(conversations)
    with psycopg.connect(a.url) as conn:
        queued = conn.execute("SELECT conversation_id, COUNT(*) FROM outbox "
                              "GROUP BY conversation_id").fetchall()
    assert sorted(queued) == sorted((cid, 1) for cid in conversations)


async def test_webhook_deliveries_and_fetches_are_leases_too(
        stores: OpenStores, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await stores(2)
    a.lease = b.lease = 0.5  # [store] claim_lease_seconds
    assert await a.fan_out("hook", lambda _t: True) == 0  # a new subscription starts now
    await a.ingest(inbound("m1", remote_attachments=[
        RemoteAttachment("https://files.example/a", "api:a", "a.pdf", "application/pdf")]), [])
    added = await asyncio.gather(a.fan_out("hook", lambda _t: True),
                                 b.fan_out("hook", lambda _t: True))
    assert sum(added) == 3  # customer, conversation, message: once, not twice
    first = await a.claim_deliveries("hook", 10)
    assert [d.seq for d in first] == [1, 2]  # 3 waits for 2 (same conversation: in order)
    assert await b.claim_deliveries("hook", 10) == []
    fetch, = await a.claim_fetches(10)
    assert await b.claim_fetches(10) == []
    await asyncio.sleep(0.6)
    assert [d.seq for d in await b.claim_deliveries("hook", 10)] == [1, 2]
    again, = await b.claim_fetches(10)
    assert again.id == fetch.id and again.attempts == 2


async def test_a_singleton_runs_on_one_instance_and_moves_when_its_owner_dies(
        pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(singleton, "POLL_SECONDS", 0.1)
    monkeypatch.setattr(singleton, "CHECK_SECONDS", 0.2)
    dsn = pg_server.fresh_database()
    running: list[str] = []
    started = asyncio.Event()

    def body(who: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running.append(who)
            started.set()
            await asyncio.Event().wait()
        return run

    first = asyncio.create_task(singleton.run_owned(dsn, "imap:mailbox", body("first")))
    await asyncio.wait_for(started.wait(), 5)
    second = asyncio.create_task(singleton.run_owned(dsn, "imap:mailbox", body("second")))
    await asyncio.sleep(0.5)
    assert running == ["first"]  # the second waits its turn
    started.clear()
    with psycopg.connect(dsn, autocommit=True) as admin:  # the owner's session dies
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'omnirelay-own:imap:mailbox' AND pid IN "
                      "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")
    await asyncio.wait_for(started.wait(), 5)
    assert running == ["first", "second"]
    with pytest.raises(Exception, match=r"lost the lock|ownership"):
        await asyncio.wait_for(first, 5)  # the old owner's body was stopped
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


async def test_a_batch_of_known_senders_reads_them_in_a_few_statements_not_one_per_message(
        stores: OpenStores, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round trip is most of a message's cost on PostgreSQL: the batch reads its senders'
    identities, customers, latest conversations and metrics rows at once (prefetch_senders),
    so a wave of messages from known customers costs a handful of statements per batch,
    and stores what the one-by-one path stored."""
    from gateway.store.postgres.conn import Connection
    [store] = await stores(1)
    senders = [f"known-{i}" for i in range(40)]
    first = await asyncio.gather(*(store.ingest(inbound(f"first-{s}", s), [])
                                   for s in senders))
    statements: list[str] = []
    execute = Connection.execute

    def counting(self: Connection, sql: str, params: object = ()) -> object:
        statements.append(sql)
        return execute(self, sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "execute", counting)
    second = await asyncio.gather(*(store.ingest(inbound(f"second-{s}", s), [])
                                    for s in senders))
    monkeypatch.undo()
    one_by_one = [sql for sql in statements if "WHERE kind = ? AND address = ?" in sql
                  or "FROM stat_conversations WHERE id = ?" in sql
                  or "ORDER BY last_message_at DESC, id DESC LIMIT 1" in sql
                  or "SELECT merged_into FROM customers" in sql]
    assert one_by_one == []
    assert len(statements) < 40  # 40 messages in one or a few batches
    # Same outcome as the first wave's one-by-one reads: each sender is still one
    # customer, and the second message joined the conversation the first one opened.
    for a, b in zip(first, second, strict=True):
        assert b.created
        assert b.message["customer_id"] == a.message["customer_id"]
        assert b.message["conversation_id"] == a.message["conversation_id"]
    # The metrics saw both messages of every conversation (state read through the batch).
    with psycopg.connect(store.url) as conn:
        states = dict(conn.execute("SELECT id, state FROM stat_conversations").fetchall())
    assert {a.message["conversation_id"] for a in first} == set(states)
    assert all(orjson.loads(state)["messages"] == 2 for state in states.values())


async def test_an_instance_commits_while_another_is_still_storing_its_batch(
        stores: OpenStores) -> None:
    """The feed_head lock is taken when a batch numbers its events (at its flush), not at
    its first statement: instance B commits a message while instance A is still inside its
    own batch, and A's events then follow B's, with every seq in the bodies, the cursors
    and the message rows agreeing."""
    import threading
    a, b = await stores(2)
    inside, release = threading.Event(), threading.Event()
    prefetch = a.pg.prefetch
    assert prefetch is not None

    def held(*args: object) -> None:  # runs inside A's batch, after its own locks
        inside.set()
        release.wait(10)
        prefetch(*args)  # type: ignore[arg-type]

    a.pg.prefetch = held
    pending = asyncio.ensure_future(a.ingest(inbound("from-a", "sender-a"), []))
    assert await asyncio.to_thread(inside.wait, 10)
    stored_b = await asyncio.wait_for(b.ingest(inbound("from-b", "sender-b"), []), 10)
    assert not pending.done()  # A's batch is still open while B committed
    release.set()
    stored_a = await asyncio.wait_for(pending, 10)
    a.pg.prefetch = prefetch

    page = await b.events_after(0, 100)
    while page.next < await a.head_seq():  # B hears of A's commit through NOTIFY
        await asyncio.sleep(0.05)
        page = await b.events_after(0, 100)
    bodies = [orjson.loads(body) for body in page.bodies]
    assert [int(e["seq"]) for e in bodies] == page.seqs == list(range(1, len(bodies) + 1))
    received = [e for e in bodies if e["type"] == "message.received"]
    assert [e["data"]["message"]["id"] for e in received] == [stored_b.message["id"],
                                                              stored_a.message["id"]]
    # The message rows name their own events (the feed splices a shared message by it).
    with psycopg.connect(a.url) as conn:
        links = dict(conn.execute("SELECT id, event_seq FROM messages").fetchall())
    assert {links[e["data"]["message"]["id"]] for e in received} == {
        int(e["seq"]) for e in received}


async def test_instances_making_a_checkpoint_at_once_all_keep_the_first(
        stores: OpenStores) -> None:
    made = await stores(3)
    kept = await asyncio.gather(*(s.init_checkpoint("webchat:shop:token-secret", f"secret {n}")
                                  for n, s in enumerate(made)))
    assert len(set(kept)) == 1
    assert await made[2].get_checkpoint("webchat:shop:token-secret") == kept[0]


async def test_a_write_and_a_read_after_the_servers_sessions_ended_go_through_on_new_ones(
        stores: OpenStores, pg_server: PgServer) -> None:
    """The server ended the writer's and the readers' sessions since their last use (a
    restart, a failover, a network blip): the next batch, which broke before its COMMIT
    was sent, runs again on a new connection, and so does the next read; callers never
    hear of it."""
    [store] = await stores(1)
    first = await store.ingest(inbound("before"), [])
    assert (await store.get_message(first.message["id"]))["id"] == first.message["id"]
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name IN ('omnirelay-writer', 'omnirelay-read') "
            "AND datname = %s", (store.url.rsplit("/", 1)[1],)).fetchone()
    assert ended is not None and ended[0] >= 2
    second = await store.ingest(inbound("after"), [])
    assert second.created
    assert second.message["conversation_id"] == first.message["conversation_id"]
    stored = await store.get_message(second.message["id"])
    assert stored["text"] == "hi"


async def test_a_subscriber_hears_that_it_missed_pushes_once_its_listener_is_back(
        stores: OpenStores, pg_server: PgServer) -> None:
    """A push published while an instance's listener connection is down reaches nobody
    there: once it listens again, ``missed`` tells the subscriber to read the store."""
    a, b = await stores(2)
    heard: asyncio.Queue[str] = asyncio.Queue()
    missed = asyncio.Event()
    b.broadcast("webchat:shop").subscribe(heard.put_nowait, missed.set)
    topic = a.broadcast("webchat:shop")
    for _ in range(100):  # the listeners LISTEN on their own threads, just after open()
        await topic.publish("ready?")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard.get(), 0.1)
            break
    assert not missed.is_set()  # the first LISTEN of a store misses nothing
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'omnirelay-listen' AND datname = %s",
            (b.url.rsplit("/", 1)[1],)).fetchone()
    assert killed is not None and killed[0] == 2
    await asyncio.wait_for(missed.wait(), 10)
    await topic.publish("after")
    while (payload := await asyncio.wait_for(heard.get(), 10)) == "ready?":
        pass
    assert payload == "after"  # and the subscription still hears what comes next


async def test_a_push_reaches_the_topics_subscribers_on_the_other_instances_only(
        stores: OpenStores) -> None:
    a, b, c = await stores(3)
    heard: dict[str, list[str]] = {"a": [], "b": [], "c": [], "other": []}
    waits: dict[str, asyncio.Event] = {}

    def hear(name: str) -> Callable[[str], None]:
        def handler(payload: str) -> None:
            heard[name].append(payload)
            if heard["b"] and heard["b"][-1:] == heard["c"][-1:]:
                waits.setdefault(payload, asyncio.Event()).set()
        return handler

    async def heard_by_b_and_c(payload: str) -> None:
        await asyncio.wait_for(waits.setdefault(payload, asyncio.Event()).wait(), 10)

    for name, store in (("a", a), ("b", b), ("c", c)):
        store.broadcast("webchat:shop").subscribe(hear(name))
    b.broadcast("webchat:other").subscribe(hear("other"))
    topic = a.broadcast("webchat:shop")
    # The listeners LISTEN on their own threads, just after open(): wait until they do.
    for _ in range(100):
        await topic.publish("ready?")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waits.setdefault("ready?", asyncio.Event()).wait(), 0.1)
            break
    big = "가" * (topic.limit // 3)  # the limit counts UTF-8 bytes, not characters
    await topic.publish(big)
    await heard_by_b_and_c(big)
    with pytest.raises(StoreError):
        await topic.publish("x" * (topic.limit + 1))
    await topic.publish("after")  # the refused one broke nothing
    await heard_by_b_and_c("after")
    pushed = {name: [p for p in payloads if p != "ready?"] for name, payloads in heard.items()}
    assert pushed["b"] == pushed["c"] == [big, "after"]
    assert heard["a"] == [] and heard["other"] == []  # not back to the publisher, not elsewhere
