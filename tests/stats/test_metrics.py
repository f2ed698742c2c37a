"""The support metrics on a seeded history whose answers are worked out by hand below.

Events are folded in with the times they carry (``apply_event``), exactly as ``Tx.emit``
folds them in as they are written; tests/stats/test_api.py drives the real store.

The history, in minutes after 2026-11-02 00:00 UTC (09:00 in Seoul):

C1 (customer K1, api:a): 0 opened + customer message, 1 customer message (same run),
   2 acknowledgement (automatic), 10 reply by A1, 20 customer, 50 reply by A1,
   60 closed by A1, 61 survey sent, 70 CSAT 5 by A1.
C2 (K2, api:a): 5 opened + customer message, 7 the customer's auto-reply, 30 reply by A2
   fails, 40 reply by A2, 45 closed by A2, 100 reopened + customer message, 130 reply by
   A1, 200 closed by A1, 201 survey sent, 210 CSAT 3 by A1.
C3 (K3, email:default): 15 opened by us + our message by A1 (agent-started), 25 customer,
   35 reply by A1; stays open.
C4 (K1, api:a): 80 opened + customer message, 90 closed by nobody (no human reply).
C5 (K4, api:a): 930 (15:30 UTC = 00:30 on 3 November in Seoul) opened + customer message.

By hand:
- FRT: C1 10 min (600 s, A1), C2 35 min (2100 s, A2); C3 is agent-started: none.
  median (600+2100)/2 = 1350; p90 = 600 + 0.9 * 1500 = 1950.
- responses: C1 600 (A1), 1800 (A1); C2 2100 (A2), 1800 (A1); C3 600 (A1). Sorted
  600 600 1800 1800 2100: median 1800; p90 at rank 3.6 = 1800 + 0.6 * 300 = 1980.
- resolution (last close only): C1 3600 (A1), C2 5 -> 200 min = 11700 (A1; its first
  close was taken back when it reopened), C4 600 (nobody). median 3600; p90 at rank 1.8 =
  3600 + 0.8 * 8100 = 10080.
- closed conversations (last close): 3; with a human reply C1 (2), C2 (2): one-touch 0/2;
  automatic resolutions 1 (C4); messages: C1 6 (the failed reply is no message), C2 5,
  C4 1: 12/3 = 4.
- closes: 4 (A1 two, A2 one, nobody one).
- created 5 by 4 distinct customers who wrote: contact rate 1.25. Open at the end: C3, C5.
- CSAT: 2 surveys, 2 answers, average 4, satisfaction 1/2.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.stats.query import StatsQuery, compute_stats
from gateway.store.jobs.stats import HoursOf, apply_event
from gateway.store.migrate import apply_migrations

T0 = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())
DAY = 86_400
A1 = {"id": "a-1", "name": "Ji-woo"}
A2 = {"id": "a-2", "name": "Sam"}


class History:
    """Writes the events of the history through the aggregates' own entry point."""

    def __init__(self, conn: sqlite3.Connection, hours: HoursOf | None = None,
                 start: int = T0) -> None:
        self.conn = conn
        self.n = 0
        self.hours = hours  # the accounts' business hours (tests/stats/test_business_hours.py)
        self.start = start

    def at(self, minute: float) -> float:
        return self.start + minute * 60

    def event(self, minute: float, event_type: str, data: dict[str, Any]) -> None:
        apply_event(self.conn, event_type, data, self.at(minute), hours=self.hours)

    def conversation(self, cid: str, channel: str = "api", account: str = "a",
                     **extra: Any) -> dict[str, Any]:
        return {"id": cid, "channel": channel, "account": account, "assignee": None, **extra}

    def opened(self, minute: float, cid: str, **kw: Any) -> None:
        self.event(minute, "conversation.opened", {"conversation": self.conversation(cid, **kw)})

    def message(self, cid: str, customer: str, direction: str, status: str, *,
                agent: dict[str, str] | None = None, automatic: str | None = None,
                channel: str = "api", account: str = "a") -> dict[str, Any]:
        self.n += 1
        return {"id": f"msg_{self.n:04d}", "conversation_id": cid, "customer_id": customer,
                "channel": channel, "account": account, "direction": direction,
                "status": status, "agent": agent, "automatic": automatic}

    def customer(self, minute: float, cid: str, customer: str, *, automatic: str | None = None,
                 channel: str = "api", account: str = "a") -> None:
        message = self.message(cid, customer, "inbound", "received", automatic=automatic,
                               channel=channel, account=account)
        self.event(minute, "message.received", {
            "message": message, "conversation": self.conversation(cid, channel, account)})

    def reply(self, minute: float, cid: str, agent: dict[str, str] | None, *,
              automatic: str | None = None, fails: bool = False, channel: str = "api",
              account: str = "a") -> None:
        message = self.message(cid, "k", "outbound", "failed" if fails else "sent",
                               agent=agent, automatic=automatic, channel=channel,
                               account=account)
        self.event(minute, "message.status", {"message": message})
        if not fails:  # the delivery receipt after it counts nothing more
            self.event(minute + 0.5, "message.status", {"message": {**message,
                                                                    "status": "delivered"}})

    def closed(self, minute: float, cid: str, agent: dict[str, str] | None, **kw: Any) -> None:
        self.event(minute, "conversation.closed", {"conversation": self.conversation(cid, **kw),
                                                   "agent": agent})

    def reopened(self, minute: float, cid: str, **kw: Any) -> None:
        self.event(minute, "conversation.reopened", {
            "conversation": self.conversation(cid, **kw), "agent": None})

    def csat(self, minute: float, cid: str, score: int, agent: dict[str, str] | None) -> None:
        self.event(minute, "conversation.updated", {
            "conversation": self.conversation(cid), "agent": None,
            "changes": {"csat": {"from": None, "to": {"score": score, "agent": agent,
                                                     "answered_at": "…"}}}})


def seed(conn: sqlite3.Connection) -> None:
    h = History(conn)
    h.opened(0, "C1")
    h.customer(0, "C1", "K1")
    h.customer(1, "C1", "K1")
    h.reply(2, "C1", None, automatic="acknowledgement")
    h.opened(5, "C2")
    h.customer(5, "C2", "K2")
    h.customer(7, "C2", "K2", automatic="auto_reply")
    h.reply(10, "C1", A1)
    h.opened(15, "C3", channel="email", account="default")
    h.reply(15, "C3", A1, channel="email", account="default")
    h.customer(20, "C1", "K1")
    h.customer(25, "C3", "K3", channel="email", account="default")
    h.reply(30, "C2", A2, fails=True)
    h.reply(35, "C3", A1, channel="email", account="default")
    h.reply(40, "C2", A2)
    h.closed(45, "C2", A2)
    h.reply(50, "C1", A1)
    h.closed(60, "C1", A1)
    h.reply(61, "C1", None, automatic="survey")
    h.csat(70, "C1", 5, A1)
    h.opened(80, "C4")
    h.customer(80, "C4", "K1")
    h.closed(90, "C4", None)
    h.reopened(100, "C2")
    h.customer(100, "C2", "K2")
    h.reply(130, "C2", A1)
    h.closed(200, "C2", A1)
    h.reply(201, "C2", None, automatic="survey")
    h.csat(210, "C2", 3, A1)
    h.opened(930, "C5")
    h.customer(930, "C5", "K4")


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    path: Path = tmp_path_factory.mktemp("metrics") / "m.db"
    connection = sqlite3.connect(path, isolation_level=None)
    apply_migrations(connection)
    seed(connection)
    yield connection
    connection.close()


def stats(conn: sqlite3.Connection, group_by: str | None = None, *, start: int = T0,
          end: int = T0 + DAY, zone: str = "UTC") -> dict[str | None, dict[str, Any]]:
    answer = compute_stats(conn, StatsQuery(start, end, group_by, zone))
    return {g["key"]: g for g in answer["groups"]}


def test_the_totals_are_the_ones_worked_out_by_hand(conn: sqlite3.Connection) -> None:
    total = stats(conn)[None]
    assert total["first_response_time"] == {"median": 1350.0, "p90": 1950.0, "count": 2}
    assert total["response_time"] == {"median": 1800.0, "p90": 1980.0, "count": 5}
    assert total["resolution_time"] == {"median": 3600.0, "p90": 10080.0, "count": 3}
    assert total["one_touch_resolution_rate"] == 0.0
    assert total["automatic_resolutions"] == 1
    assert total["messages_per_conversation"] == 4.0
    assert total["conversations_closed"] == 4
    assert total["conversations_created"] == 5
    assert total["contact_rate"] == 1.25
    assert total["open_conversations"] == 2
    assert total["csat"] == {"surveys_sent": 2, "responses": 2, "response_rate": 1.0,
                             "average_score": 4.0, "satisfaction_score": 0.5}


def test_grouped_by_agent_replies_count_for_who_sent_them_closes_for_who_closed(
        conn: sqlite3.Connection) -> None:
    groups = stats(conn, "agent")
    a1, a2, nobody = groups["a-1"], groups["a-2"], groups[None]
    assert a1["first_response_time"] == {"median": 600.0, "p90": 600.0, "count": 1}
    assert a1["response_time"]["count"] == 4  # 600, 1800 (C1), 1800 (C2), 600 (C3)
    assert a1["response_time"]["median"] == 1200.0
    assert a1["conversations_closed"] == 2
    # 3600 and 11700: median 7650, p90 3600 + 0.9 * 8100 = 10890
    assert a1["resolution_time"] == {"median": 7650.0, "p90": 10890.0, "count": 2}
    assert a1["csat"]["responses"] == 2 and a1["csat"]["surveys_sent"] == 2
    assert a2["first_response_time"] == {"median": 2100.0, "p90": 2100.0, "count": 1}
    assert a2["conversations_closed"] == 1
    # A2's close was taken back by the reopen: no resolution left for A2.
    assert a2["resolution_time"]["count"] == 0 and a2["one_touch_resolution_rate"] is None
    assert nobody["conversations_created"] == 5 and nobody["automatic_resolutions"] == 1
    assert nobody["contact_rate"] == 1.25


def test_grouped_by_account_and_channel(conn: sqlite3.Connection) -> None:
    accounts = stats(conn, "account")
    assert set(accounts) == {"a", "default"}
    assert accounts["default"]["response_time"]["count"] == 1
    assert accounts["default"]["first_response_time"]["count"] == 0  # agent-started
    assert accounts["default"]["open_conversations"] == 1
    assert accounts["a"]["conversations_created"] == 4
    assert accounts["a"]["contact_rate"] == round(4 / 3, 4)  # K1 (twice), K2, K4
    channels = stats(conn, "channel")
    assert channels["email"]["conversations_created"] == 1
    assert channels["api"]["resolution_time"]["count"] == 3


def test_grouped_by_day_in_the_configured_time_zone(conn: sqlite3.Connection) -> None:
    seoul = stats(conn, "day", zone="Asia/Seoul")
    # 2 Nov 00:00 UTC is 09:00 in Seoul; C5 came at 00:30 on 3 Nov there.
    assert list(seoul) == ["2026-11-02", "2026-11-03"]
    assert seoul["2026-11-02"]["conversations_created"] == 4
    assert seoul["2026-11-02"]["open_conversations"] == 1  # C3 at Seoul's midnight
    assert seoul["2026-11-03"]["conversations_created"] == 1
    assert seoul["2026-11-03"]["open_conversations"] == 2
    utc = stats(conn, "day")
    assert list(utc) == ["2026-11-02"] and utc["2026-11-02"]["conversations_created"] == 5


def test_a_period_counts_what_happened_in_it(conn: sqlite3.Connection) -> None:
    # The first hour: C1's and C2's first responses (10 and 40 min), no close of C1 yet.
    first_hour = stats(conn, end=T0 + 3600)[None]
    assert first_hour["first_response_time"]["count"] == 2
    assert first_hour["conversations_closed"] == 1  # C2 by A2 at 45 ...
    assert first_hour["resolution_time"]["count"] == 0  # ... taken back by its reopen
    assert first_hour["open_conversations"] == 2  # C1 and C3 at 01:00
    later = stats(conn, start=T0 + 3600)[None]
    assert later["first_response_time"]["count"] == 0
    assert later["resolution_time"]["count"] == 3
    assert later["conversations_created"] == 2  # C4 and C5
    assert later["open_conversations"] == 2


def test_days_follow_daylight_saving_time(tmp_path: Path) -> None:
    """New York leaves DST on Sunday 1 November 2026: that day has 25 hours, and 23:30
    local time is 04:30 UTC the next day."""
    connection = sqlite3.connect(tmp_path / "dst.db", isolation_level=None)
    apply_migrations(connection)
    h = History(connection)
    start = int(datetime(2026, 11, 1, 4, tzinfo=UTC).timestamp())  # 00:00 EDT
    h.opened((start - T0) / 60 + 24.5 * 60, "late")  # 1 Nov 23:30 EST = 2 Nov 04:30 UTC
    h.opened((start - T0) / 60 + 25.5 * 60, "next")  # 2 Nov 00:30 EST
    days = stats(connection, "day", start=start, end=start + 2 * DAY, zone="America/New_York")
    assert days["2026-11-01"]["conversations_created"] == 1
    assert days["2026-11-02"]["conversations_created"] == 1
    assert days["2026-11-02"]["open_conversations"] == 2
    connection.close()
