"""The jobs merged after the PostgreSQL store, on both backends: conversation fields (PATCH
and its filters), routing rules at ingest, identity opt-outs, LINE's all-or-none batch,
the support metrics (aggregates, and the samples handed over after a commit only).

Each case runs on SQLite too: the same calls give the same answers."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from gateway.automation.hours import BusinessHours
from gateway.automation.jobs import Automation
from gateway.cli import main
from gateway.config import StoreConfig, parse_config
from gateway.errors import OmnirelayError
from gateway.stats.query import StatsQuery, compute_stats, period
from gateway.store.base import OutboundRequest, Route
from gateway.store.jobs.outbound import _outbox_sent
from gateway.store.jobs.stats import Sample, forget_cached_rows
from gateway.store.jobs.tx import Tx
from gateway.store.migrate import apply_migrations
from gateway.store.postgres.conn import Connection
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party
from tests.postgres.fixtures import new_store, store_config
from tests.postgres.server import PgServer
from tests.stats.test_business_hours import END as BUSINESS_END
from tests.stats.test_business_hours import START as BUSINESS_START
from tests.stats.test_business_hours import seed_business
from tests.stats.test_metrics import DAY, T0, seed

RULES = """
[automation]
[[automation.rules]]
name = "refunds"
keywords = ["refund"]
tags = ["refund"]
queue = "billing"
[[automation.rules]]
name = "urgent"
keywords = ["urgent"]
priority = "high"
tags = ["urgent"]
"""
ROUTE = Route("api", "a", Party("external", "omnirelay:a"), ("external",))
AGENT = {"id": "a-1", "name": "Ji-woo"}


@pytest.fixture
async def store(tmp_path: Path, backend: str,
                request: pytest.FixtureRequest) -> AsyncIterator[SQLiteStore]:
    """A fresh store of each backend with routing rules; ``store.samples`` collects what
    ``on_samples`` was handed."""
    samples: list[Sample] = []
    s = new_store(store_config(backend, tmp_path, request, synchronous="NORMAL"),
                  on_samples=samples.extend)
    s.automation = Automation(parse_config(textwrap.dedent(RULES), environ={}).automation, {})
    await s.open()
    s.samples = samples  # type: ignore[attr-defined]
    yield s
    await s.close()


def inbound(provider_id: str, sender: str = "u1", text: str = "hi",
            **kwargs: Any) -> InboundMessage:
    return InboundMessage(channel="api", account="a", provider_message_id=provider_id,
                          sender=Party("external", sender), text=text, **kwargs)


async def event_types(store: SQLiteStore, after: int = 0) -> list[str]:
    page = await store.events_after(after, 1000)
    return [orjson.loads(body)["type"] for body in page.bodies]


async def test_a_patch_sets_the_fields_and_each_filter_finds_the_conversation(
        store: SQLiteStore) -> None:
    first = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    other = (await store.ingest(inbound("m2", sender="u2"), [])).message["conversation_id"]
    head = await store.head_seq()
    changed = await store.patch_conversation(
        first, {"tags": ["vip", "returns"], "queue": "q1", "assignee": AGENT}, AGENT)
    assert changed["tags"] == ["vip", "returns"] and changed["assignee"] == AGENT
    assert await event_types(store, head) == ["conversation.updated"]
    again = await store.patch_conversation(first, {"tags": ["vip", "returns"]}, None)
    assert again == changed and await event_types(store, head) == ["conversation.updated"]

    async def ids(**filters: str | None) -> list[str]:
        found = await store.list_conversations(status=None, customer_id=None, after=None,
                                               limit=10, **filters)
        return [c["id"] for c in found]
    assert await ids(tag="vip") == [first]
    assert await ids(queue="q1") == [first] and await ids(assignee="a-1") == [first]
    assert sorted(await ids(channel="api")) == sorted([first, other])
    page = await store.events_after(head, 10)
    changed_at = orjson.loads(page.bodies[0])["created_at"]
    assert first in await ids(updated_since=changed_at)
    assert await ids(updated_since="2999-01-01T00:00:00.000Z") == []
    # A tag taken off leaves the tag index (a trigger on both backends).
    await store.patch_conversation(first, {"tags": ["returns"], "assignee": None}, None)
    assert await ids(tag="vip") == [] and await ids(tag="returns") == [first]
    assert await ids(assignee="a-1") == []
    got = await store.get_conversation(first)
    assert got["tags"] == ["returns"] and got["assignee"] is None and got["csat"] is None


async def test_a_routing_rule_tags_a_new_conversation_and_a_later_message_updates_it(
        store: SQLiteStore) -> None:
    result = await store.ingest(inbound("m1", text="I want a refund"), [])
    conversation = await store.get_conversation(result.message["conversation_id"])
    assert conversation["tags"] == ["refund"] and conversation["queue"] == "billing"
    head = await store.head_seq()
    await store.ingest(inbound("m2", text="this is urgent"), [])
    conversation = await store.get_conversation(conversation["id"])
    assert conversation["priority"] == "high"
    assert set(conversation["tags"]) == {"refund", "urgent"}
    assert await event_types(store, head) == ["conversation.updated", "message.received"]
    found = await store.list_conversations(status=None, customer_id=None, after=None,
                                           limit=10, tag="urgent")
    assert [c["id"] for c in found] == [conversation["id"]]


async def test_an_opt_out_is_kept_on_the_identity_until_it_ends(store: SQLiteStore) -> None:
    await store.ingest(inbound("m1", sender="+821012345678"), [])
    assert await store.opted_out("external", "+821012345678", "api", "a") is False
    customer = await store.set_opt_out("external", "+821012345678", "api", "a", "STOP")
    assert customer is not None
    [identity] = customer["identities"]
    assert [(o["account"], o["keyword"]) for o in identity["opt_outs"]] == [("a", "STOP")]
    assert await store.opted_out("external", "+821012345678", "api", "a") is True
    assert await store.opted_out("external", "+821012345678", "api", "b") is False
    await store.set_opt_out("external", "+821012345678", "api", "a", None)
    assert await store.opted_out("external", "+821012345678", "api", "a") is False
    assert "opt_outs" not in (await store.get_customer(customer["id"]))["identities"][0]
    assert await store.set_opt_out("external", "nobody", "api", "a", "STOP") is None


async def test_ingest_all_stores_every_message_or_none(store: SQLiteStore) -> None:
    broken = inbound("m2", content={"unserializable": object()})  # fails inside the transaction
    with pytest.raises((TypeError, OmnirelayError)):
        await store.ingest_all([(inbound("m1"), []), (broken, []), (inbound("m3"), [])])
    assert await event_types(store) == []
    results = await store.ingest_all([(inbound(f"m{i}", text="refund"), []) for i in (1, 2, 3)])
    assert [r.created for r in results] == [True, True, True]
    again = await store.ingest_all([(inbound(f"m{i}"), []) for i in (1, 2, 3)])
    assert [r.created for r in again] == [False, False, False]
    conversation = await store.get_conversation(results[0].message["conversation_id"])
    assert conversation["tags"] == ["refund"]  # the rule ran in the batch
    assert len(await store.list_messages(conversation["id"], None, 10)) == 3


async def test_a_reply_and_a_close_reach_the_aggregates_and_the_samples_after_commit(
        store: SQLiteStore) -> None:
    samples: list[Sample] = store.samples  # type: ignore[attr-defined]
    cid = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    _status, reply = await store.enqueue_outbound(
        conversation_id=cid, customer_id=None, request=OutboundRequest(text="on it",
                                                                       agent=AGENT),
        routes=[ROUTE], idempotency=None)

    def sent_then_fails(tx: Tx) -> None:
        _outbox_sent(tx, reply["id"], "p-1", "sent")
        raise ValueError("undone after measuring")
    with pytest.raises(ValueError, match="undone"):
        await store.write(sent_then_fails)
    assert samples == []  # the rolled back job's durations never happened
    await store.outbox_sent(reply["id"], "p-1")
    assert sorted(s[0] for s in samples) == ["frt", "response"]
    assert all(s[1:3] == ("api", "a") and s[3] >= 0 for s in samples)
    await store.set_conversation_status(cid, "closed", AGENT)
    assert sorted(s[0] for s in samples) == ["frt", "resolution", "response"]

    start, end = period(None, None)
    [mine] = [g for g in (await store.stats(StatsQuery(start, end, "agent")))["groups"]
              if g["key"] == "a-1"]
    assert mine["first_response_time"]["count"] == 1
    assert mine["conversations_closed"] == 1 and mine["one_touch_resolution_rate"] == 1.0
    [total] = (await store.stats(StatsQuery(start, end)))["groups"]
    assert total["conversations_created"] == 1 and total["contact_rate"] == 1.0
    assert total["open_conversations"] == 0


# ---------------------------------------------------------------- the metrics' reads


@pytest.fixture(scope="module")
def seeded(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[sqlite3.Connection, Connection]]:
    """The metrics tests' history written through the aggregates' entry point into both a
    SQLite file and a PostgreSQL database."""
    lite = sqlite3.connect(tmp_path_factory.mktemp("metrics") / "m.db", isolation_level=None)
    apply_migrations(lite)
    seed(lite)
    pg = Connection.connect(pg_server.new_database())
    forget_cached_rows()  # this thread just wrote the same conversations into SQLite
    seed(pg)  # type: ignore[arg-type]  # sqlite3's surface, PostgreSQL's server
    yield lite, pg
    lite.close()
    pg.close()


@pytest.mark.parametrize("group_by", [None, "channel", "account", "agent", "day"])
@pytest.mark.parametrize("window", [(T0, T0 + DAY, "UTC"), (T0 + 3600, T0 + DAY, "UTC"),
                                    (T0, T0 + 3600, "UTC"), (T0, T0 + DAY, "Asia/Seoul")])
def test_the_metrics_of_a_period_are_the_same_on_postgresql(
        seeded: tuple[sqlite3.Connection, Connection], group_by: str | None,
        window: tuple[int, int, str]) -> None:
    lite, pg = seeded
    query = StatsQuery(window[0], window[1], group_by, window[2])
    expected = compute_stats(lite, query)
    assert expected["groups"] and any(g["conversations_created"] for g in expected["groups"])
    assert compute_stats(pg, query) == expected  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def seeded_business(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[sqlite3.Connection, Connection]]:
    """The business-hours history (tests/stats/test_business_hours.py) in both backends."""
    lite = sqlite3.connect(tmp_path_factory.mktemp("business") / "b.db", isolation_level=None)
    apply_migrations(lite)
    forget_cached_rows()
    seed_business(lite)
    pg = Connection.connect(pg_server.new_database())
    forget_cached_rows()  # this thread just wrote the same conversations into SQLite
    seed_business(pg)  # type: ignore[arg-type]  # sqlite3's surface, PostgreSQL's server
    yield lite, pg
    lite.close()
    pg.close()


@pytest.mark.parametrize("group_by", [None, "account", "agent", "day"])
@pytest.mark.parametrize("clock", ["wall", "business"])
def test_the_business_clock_is_the_same_on_postgresql(
        seeded_business: tuple[sqlite3.Connection, Connection], group_by: str | None,
        clock: str) -> None:
    lite, pg = seeded_business
    query = StatsQuery(BUSINESS_START, BUSINESS_END, group_by, "Asia/Seoul", clock=clock)
    expected = compute_stats(lite, query)
    assert expected["clock"] == clock
    assert compute_stats(pg, query) == expected  # type: ignore[arg-type]
    if group_by is None and clock == "business":  # the hand-worked values, reopen included
        [total] = expected["groups"]
        assert total["resolution_time"] == {"median": 35100.0, "p90": 58860.0, "count": 2}


ALWAYS = BusinessHours.build("UTC", {day: "00:00-24:00" for day in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")})


async def test_the_store_writes_business_durations_for_accounts_with_hours(
        store: SQLiteStore) -> None:
    """Open around the clock, the business durations are the wall ones, whenever this
    runs; a reopen takes both resolutions back. The samples for /metrics have both clocks
    (a resolution at each close: histograms take nothing back)."""
    samples: list[Sample] = store.samples  # type: ignore[attr-defined]
    store.business_hours = lambda channel, account: ALWAYS if account == "a" else None
    cid = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
    _status, reply = await store.enqueue_outbound(
        conversation_id=cid, customer_id=None, request=OutboundRequest(text="on it",
                                                                       agent=AGENT),
        routes=[ROUTE], idempotency=None)
    await store.outbox_sent(reply["id"], "p-1")
    await store.set_conversation_status(cid, "closed", AGENT)
    await store.set_conversation_status(cid, "open", None)
    await store.set_conversation_status(cid, "closed", AGENT)
    start, end = period(None, None)
    [wall] = (await store.stats(StatsQuery(start, end)))["groups"]
    [business] = (await store.stats(StatsQuery(start, end, clock="business")))["groups"]
    for name in ("first_response_time", "response_time", "resolution_time"):
        assert wall[name]["count"] == 1, name
        # To the millisecond: one is a difference of floats, the other of datetimes.
        assert business[name] == pytest.approx(wall[name], abs=0.002), name
    assert sorted(s[0] for s in samples) == [
        "frt", "frt_business", "resolution", "resolution", "resolution_business",
        "resolution_business", "response", "response_business"]
    by_name = {s[0]: s[3] for s in samples}
    for name in ("frt", "response", "resolution"):
        assert by_name[f"{name}_business"] == pytest.approx(by_name[name], abs=0.002), name


# ---------------------------------------------------------------- omnirelay report


def aggregates(url: str) -> dict[str, list[Any]]:
    """Every aggregate row, in key order."""
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
                for table in ("stat_buckets", "stat_durations", "stat_open", "stat_open_days",
                              "stat_writers")} | {
            "stat_conversations": conn.execute(
                "SELECT * FROM stat_conversations ORDER BY id").fetchall()}


async def test_report_and_its_rebuild_on_postgresql(
        pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = pg_server.fresh_database()
    store = new_store(StoreConfig(url=url, data_dir=tmp_path))
    await store.open()
    try:
        cid = (await store.ingest(inbound("m1"), [])).message["conversation_id"]
        await store.ingest(inbound("m2", sender="u2"), [])
        await store.patch_conversation(cid, {"assignee": AGENT}, None)
        _status, reply = await store.enqueue_outbound(
            conversation_id=cid, customer_id=None, request=OutboundRequest(
                text="on it", agent=AGENT), routes=[ROUTE], idempotency=None)
        await store.outbox_sent(reply["id"], "p-1")
        await store.set_conversation_status(cid, "closed", AGENT)
        await store.set_conversation_status(cid, "open", None)
        await store.set_conversation_status(cid, "closed", AGENT)
    finally:
        await store.close()
    kept = aggregates(url)
    assert kept["stat_buckets"] and kept["stat_durations"] and kept["stat_writers"]
    config = tmp_path / "omnirelay.toml"
    config.write_text(f'[store]\nurl = "{url}"\ndata_dir = "{tmp_path}"\n')
    with psycopg.connect(url) as conn:  # as a database from before migration 0008 has
        conn.execute("DELETE FROM stat_buckets")
        conn.execute("DELETE FROM stat_conversations")
    assert main(["report", "--config", str(config), "--rebuild", "--chart", "-"]) == 0
    out, err = capsys.readouterr()
    assert "metrics rebuilt from" in err
    assert aggregates(url) == kept
    total = next(line for line in out.splitlines() if line.startswith("(all)"))
    assert total.split()[1] == "2"  # two conversations created


async def test_an_instance_folds_in_what_another_instance_changed_meanwhile(
        pg_server: PgServer, tmp_path: Path) -> None:
    # The metrics follow one conversation whose customer writes to instance A while the
    # agent answers through instance B: each instance folds in the other's changes.
    url = pg_server.fresh_database()
    a = new_store(StoreConfig(url=url, data_dir=tmp_path / "a"))
    b = new_store(StoreConfig(url=url, data_dir=tmp_path / "b"))
    await a.open()
    await b.open()
    try:
        cid = (await a.ingest(inbound("m1"), [])).message["conversation_id"]
        for n in (1, 2):  # the customer writes to A, the agent answers through B
            if n == 2:
                await a.ingest(inbound("m2", text="and?"), [])
            _status, reply = await b.enqueue_outbound(
                conversation_id=cid, customer_id=None, request=OutboundRequest(
                    text=f"on it {n}", agent=AGENT), routes=[ROUTE], idempotency=None)
            await b.outbox_sent(reply["id"], f"p-{n}")
        await a.set_conversation_status(cid, "closed", AGENT)
        start, end = period(None, None)
        [mine] = [g for g in (await a.stats(StatsQuery(start, end, "agent")))["groups"]
                  if g["key"] == "a-1"]
    finally:
        await a.close()
        await b.close()
    assert mine["first_response_time"]["count"] == 1
    assert mine["response_time"]["count"] == 2
    assert mine["conversations_closed"] == 1 and mine["one_touch_resolution_rate"] == 0.0
