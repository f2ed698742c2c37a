"""The aggregates the store keeps as it writes equal the ones its events give again
(``omnirelay report --rebuild``), and ``omnirelay report`` prints them with a chart."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.automation.hours import BusinessHours
from gateway.cli import main, progress
from gateway.config import StoreConfig
from gateway.stats.query import StatsQuery
from gateway.store.base import OutboundRequest, Route
from gateway.store.jobs.stats import rebuild
from gateway.store.sqlite import SQLiteStore
from normalizer.model import InboundMessage, Party

AGENT = {"id": "a-1", "name": "Ji-woo"}
# Account "a" is open around the clock (so its business durations are its wall ones
# whenever the test runs); "b" has no business hours. The same as configured below.
ALWAYS = BusinessHours.build("UTC", {day: "00:00-24:00" for day in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")})
HOURS_CONFIG = """
[automation.hours.always]
timezone = "UTC"
weekdays = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"
[[automation.accounts]]
account = "a"
hours = "always"
"""


def hours_of(channel: str, account: str) -> BusinessHours | None:
    return ALWAYS if account == "a" else None


def inbound(provider_id: str, sender: str, automatic: str | None = None,
            account: str = "a") -> InboundMessage:
    return InboundMessage(channel="api", account=account, provider_message_id=provider_id,
                          sender=Party("external", sender), text="hi", automatic=automatic)


def snapshot(path: Path) -> dict[str, list[Any]]:
    conn = sqlite3.connect(path)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
                for table in ("stat_buckets", "stat_durations", "stat_open", "stat_open_days",
                              "stat_writers")} | {
            "stat_conversations": conn.execute(
                "SELECT * FROM stat_conversations ORDER BY id").fetchall()}
    finally:
        conn.close()


@pytest.fixture(scope="module")
async def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that went through replies (one failed), closes, a reopen, an assignment."""
    root = tmp_path_factory.mktemp("rebuild")
    store = SQLiteStore(StoreConfig(url=f"sqlite:///{root}/omnirelay.db", data_dir=root,
                                    synchronous="NORMAL"))
    store.business_hours = hours_of
    await store.open()
    routes = [Route("api", "a", Party("external", "shop"), ("external",))]
    try:
        first = await store.ingest(inbound("p1", "u1"), [])
        conversation_id = first.message["conversation_id"]
        await store.ingest(inbound("p2", "u1", automatic="auto_reply"), [])
        await store.ingest(inbound("p3", "u2"), [])
        await store.patch_conversation(conversation_id, {"assignee": AGENT}, None)
        # Concurrent messages share batches, whose metrics writes are deferred and merged:
        # customers on two accounts, several messages each.
        await asyncio.gather(*(store.ingest(inbound(f"burst-{n}", f"b{n % 7}",
                                                    account="ab"[n % 2]), [])
                               for n in range(60)))
        for n, outcome in enumerate(("sent", "failed", "sent")):
            _, message = await store.enqueue_outbound(
                conversation_id=conversation_id, customer_id=None,
                request=OutboundRequest(text=f"reply {n}", agent=AGENT), routes=routes,
                idempotency=None)
            await store.claim_outbox(10)
            if outcome == "sent":
                await store.outbox_sent(message["id"], f"prov-{n}", "sent")
            else:
                await store.outbox_failed(message["id"], {"code": "x", "message": "no"})
            await store.ingest(inbound(f"p-after-{n}", "u1"), [])
        await store.set_conversation_status(conversation_id, "closed", AGENT)
        await store.set_conversation_status(conversation_id, "open", None)
        await store.set_conversation_status(conversation_id, "closed", None)
        before_merge = await store.stats(StatsQuery(0, 4_000_000_000, "account"))
        survivor = (await store.ingest(inbound("p-other", "u2"), [])).message["customer_id"]
        await store.merge_customers(survivor, first.message["customer_id"])
        after_merge = await store.stats(StatsQuery(0, 4_000_000_000, "account"))
        # A merge moves conversations, never what they counted (the new message counts).
        assert after_merge["groups"][0]["first_response_time"] == \
            before_merge["groups"][0]["first_response_time"]
        assert after_merge["groups"][0]["resolution_time"] == \
            before_merge["groups"][0]["resolution_time"]
        assert after_merge["groups"][0]["conversations_closed"] == 2
        total = await store.stats(StatsQuery(0, 4_000_000_000))
        # u1, u2 and b0-b6: nine customers wrote, whatever the accounts and batches.
        assert total["groups"][0]["contact_rate"] == round(
            total["groups"][0]["conversations_created"] / 9, 4)
        # Always open: account a's business durations are its wall ones (to the
        # millisecond: one is a difference of floats, the other of datetimes); b has none.
        wall = {g["key"]: g for g in after_merge["groups"]}
        business = {g["key"]: g for g in (await store.stats(StatsQuery(
            0, 4_000_000_000, "account", clock="business")))["groups"]}
        for name in ("first_response_time", "response_time", "resolution_time"):
            assert wall["a"][name]["count"]
            assert business["a"][name] == pytest.approx(wall["a"][name], abs=0.002)
            assert business["b"][name]["count"] == 0
    finally:
        await store.close()
    return root


def test_rebuilding_from_the_events_gives_the_same_aggregates(history: Path) -> None:
    path = history / "omnirelay.db"
    kept = snapshot(path)
    assert kept["stat_buckets"] and kept["stat_writers"] and kept["stat_conversations"]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        [business] = conn.execute("SELECT SUM(length(frt_business) + length("
                                  "response_business) + length(resolution_business)) "
                                  "FROM stat_durations").fetchone()
        assert business > 0
        seen = []
        assert rebuild(conn, chunk=3, progress=lambda done, total: seen.append(done),
                       hours=hours_of) > 0
    finally:
        conn.close()
    assert seen == sorted(seen) and len(seen) > 1
    assert snapshot(path) == kept


def test_report_prints_the_table_and_writes_the_chart(
        history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "omnirelay.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{history}/omnirelay.db"\n'
                      f'data_dir = "{history}"\n[stats]\ntime_zone = "Asia/Seoul"\n')
    for name in ("chart.svg", "chart.png"):
        chart = tmp_path / name
        assert main(["report", "--config", str(config), "--chart", str(chart)]) == 0
        out = capsys.readouterr().out
        assert "(Asia/Seoul)" in out and "FRT med" in out and "(all)" in out
        assert chart.stat().st_size > 1000
    assert (tmp_path / "chart.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    total = next(line for line in out.splitlines() if line.startswith("(all)"))
    conn = sqlite3.connect(history / "omnirelay.db")
    created = conn.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
    conn.close()
    assert total.split()[1] == str(created)  # the conversations created
    assert main(["report", "--config", str(config), "--from", "2026-11-02T00:00:00Z",
                 "--to", "2026-11-01T00:00:00Z"]) == 2


def test_report_rebuild_from_the_command_line(history: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "omnirelay.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{history}/omnirelay.db"\n'
                      f'data_dir = "{history}"\n' + HOURS_CONFIG)
    kept = snapshot(history / "omnirelay.db")
    assert main(["report", "--config", str(config), "--rebuild", "--chart", "-"]) == 0
    assert "metrics rebuilt from" in capsys.readouterr().err
    assert snapshot(history / "omnirelay.db") == kept  # the configured hours, as written
    assert main(["report", "--config", str(config), "--clock", "business",
                 "--chart", "-"]) == 0
    assert "durations in business hours" in capsys.readouterr().out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal() -> None:
    pipe, terminal = io.StringIO(), Terminal()
    for stream in (pipe, terminal):
        with progress("copying the database", stream) as update:
            update(512, 1024)
            update(1024, 1024)
    assert pipe.getvalue() == ""
    assert "copying the database" in terminal.getvalue()
