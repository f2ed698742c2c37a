"""The durations on the business-hours clock, beside the wall clock (docs/stats.md).

Account ``api:a`` keeps Seoul office hours (weekdays 09:00-18:00, Asia/Seoul); ``api:b``
has no schedule. Events are folded in at the times they carry, as in test_metrics.py.

The history (December 2026 in Seoul: Friday the 4th, Monday the 7th, …):

B1 (a): customer Fri 17:30, reply by A1 Mon 09:30, closed by A1 Mon 10:00.
    FRT and response: wall 64 h, business 30 + 30 min = 3600. Resolution: wall 64.5 h,
    business 90 min.
B2 (a): customer Mon 10:00, reply by A2 10:10 (600 both); customer Mon 17:50, reply by A2
    Tue 09:20 (wall 15.5 h, business 10 + 20 min); closed by A2 Tue 09:30 (business 8.5 h,
    taken back by the reopen); reopened Tue 11:00 with a customer message, reply by A1
    11:30 (1800 both), closed by A1 Wed 10:00: resolution wall 48 h, business 8 + 9 + 1 h.
B3 (a): customer Sat 12:00, reply by A1 Sat 13:00: wall 3600, business 0.
C (b, no hours): customer Mon 10:00, reply by A1 10:05: wall 300, no business sample.

Business, by hand: FRT 0, 600, 3600 (median 600, p90 600 + 0.8 * 3000 = 3000); responses
0, 600, 1800, 1800, 3600 (median 1800, p90 1800 + 0.6 * 1800 = 2880); resolutions 5400 and
64800 (median 35100, p90 5400 + 0.9 * 59400 = 58860).
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.automation.hours import BusinessHours
from gateway.config import parse_config
from gateway.daemon import business_hours_for
from gateway.metrics import Metrics
from gateway.stats.query import StatsQuery, compute_stats
from gateway.store.jobs.stats import forget_cached_rows, take_samples
from gateway.store.migrate import apply_migrations
from tests.stats.test_metrics import A1, A2, History

SEOUL = ZoneInfo("Asia/Seoul")
OFFICE = BusinessHours.build("Asia/Seoul", dict.fromkeys(
    ("monday", "tuesday", "wednesday", "thursday", "friday"), "09:00-18:00"))
START = int(datetime(2026, 12, 4, tzinfo=SEOUL).timestamp())  # Friday 00:00 in Seoul
END = START + 7 * 86_400
H = 3600


def office_hours(channel: str, account: str) -> BusinessHours | None:
    """As business_hours_for answers: ``api:a`` has the office's schedule, others none."""
    return OFFICE if (channel, account) == ("api", "a") else None


def m(day: int, hour: int, minute: int = 0) -> float:
    """Minutes after START of a time in Seoul on a day of December 2026."""
    return (datetime(2026, 12, day, hour, minute, tzinfo=SEOUL).timestamp() - START) / 60


def friday_to_monday(h: History) -> None:
    h.opened(m(4, 17, 30), "B1")
    h.customer(m(4, 17, 30), "B1", "K1")
    h.reply(m(7, 9, 30), "B1", A1)
    h.closed(m(7, 10), "B1", A1)


def seed_business(conn: sqlite3.Connection) -> None:
    """The history above (tests/postgres writes it into PostgreSQL too)."""
    h = History(conn, office_hours, START)
    friday_to_monday(h)
    h.opened(m(5, 12), "B3")
    h.customer(m(5, 12), "B3", "K3")
    h.reply(m(5, 13), "B3", A1)
    h.opened(m(7, 10), "B2")
    h.customer(m(7, 10), "B2", "K2")
    h.opened(m(7, 10), "C", account="b")
    h.customer(m(7, 10), "C", "K4", account="b")
    h.reply(m(7, 10, 5), "C", A1, account="b")
    h.reply(m(7, 10, 10), "B2", A2)
    h.customer(m(7, 17, 50), "B2", "K2")
    h.reply(m(8, 9, 20), "B2", A2)
    h.closed(m(8, 9, 30), "B2", A2)
    h.reopened(m(8, 11), "B2")
    h.customer(m(8, 11), "B2", "K2")
    h.reply(m(8, 11, 30), "B2", A1)
    h.closed(m(9, 10), "B2", A1)


def new_db(path: Path) -> sqlite3.Connection:
    forget_cached_rows()  # this thread may have written the same conversations elsewhere
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn)
    return conn


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    connection = new_db(tmp_path_factory.mktemp("business") / "b.db")
    seed_business(connection)
    yield connection
    connection.close()


def stats(conn: sqlite3.Connection, clock: str, group_by: str | None = None
          ) -> dict[str | None, dict[str, Any]]:
    answer = compute_stats(conn, StatsQuery(START, END, group_by, "Asia/Seoul", clock=clock))
    assert answer["clock"] == clock
    return {g["key"]: g for g in answer["groups"]}


def test_friday_evening_answered_monday_morning_is_an_hour_of_business_time(
        tmp_path: Path) -> None:
    conn = new_db(tmp_path / "one.db")
    friday_to_monday(History(conn, office_hours, START))
    wall, business = stats(conn, "wall")[None], stats(conn, "business")[None]
    conn.close()
    assert wall["first_response_time"] == {"median": 64 * H, "p90": 64 * H, "count": 1}
    assert business["first_response_time"] == {"median": H, "p90": H, "count": 1}
    assert business["response_time"] == {"median": H, "p90": H, "count": 1}
    assert wall["resolution_time"]["median"] == 64.5 * H
    assert business["resolution_time"] == {"median": 1.5 * H, "p90": 1.5 * H, "count": 1}
    # Everything but the durations is the same on either clock.
    assert {k: v for k, v in business.items() if not k.endswith("_time")} == {
        k: v for k, v in wall.items() if not k.endswith("_time")}


def test_medians_and_p90_on_the_business_clock(conn: sqlite3.Connection) -> None:
    total = stats(conn, "business")[None]
    assert total["first_response_time"] == {"median": 600.0, "p90": 3000.0, "count": 3}
    assert total["response_time"] == {"median": 1800.0, "p90": 2880.0, "count": 5}
    assert total["resolution_time"] == {"median": 35100.0, "p90": 58860.0, "count": 2}
    wall = stats(conn, "wall")[None]
    assert wall["first_response_time"]["count"] == 4  # C's too
    assert wall["response_time"]["count"] == 6
    # 64.5 h and 48 h: B2's first close was taken back on both clocks.
    assert wall["resolution_time"] == {"median": 202_500.0, "p90": 226_260.0, "count": 2}


def test_a_reopen_takes_the_business_resolution_back_with_the_wall_one(
        conn: sqlite3.Connection) -> None:
    agents = stats(conn, "business", "agent")
    assert agents["a-2"]["conversations_closed"] == 1
    assert agents["a-2"]["resolution_time"]["count"] == 0  # 8.5 h, taken back
    assert agents["a-2"]["first_response_time"] == {"median": 600.0, "p90": 600.0,
                                                    "count": 1}
    assert agents["a-1"]["resolution_time"] == {"median": 35100.0, "p90": 58860.0,
                                                "count": 2}
    blobs = conn.execute("SELECT length(resolution), length(resolution_business) "
                         "FROM stat_durations WHERE agent = 'a-2'").fetchall()
    assert all(wall == business == 0 for wall, business in blobs)


def test_an_account_without_business_hours_has_no_business_durations(
        conn: sqlite3.Connection) -> None:
    business, wall = stats(conn, "business", "account"), stats(conn, "wall", "account")
    assert wall["b"]["first_response_time"] == {"median": 300.0, "p90": 300.0, "count": 1}
    for name in ("first_response_time", "response_time", "resolution_time"):
        assert business["b"][name] == {"median": None, "p90": None, "count": 0}
    assert business["b"]["conversations_created"] == 1  # the rest is counted as ever
    assert business["a"]["first_response_time"]["count"] == 3


def test_prometheus_has_a_business_histogram_beside_the_wall_one(tmp_path: Path) -> None:
    """A reply partly outside office hours, as the store hands its samples to /metrics after
    the commit: customer Friday 17:10, reply Monday 09:25 (Seoul). Wall: 2 days 16 h 15 min
    = 231300 s, past the 2-day bucket, inside 7 days. Business: 50 min on Friday + 25 on
    Monday = 4500 s, past the hour, inside 2 hours. Account ``b`` (no hours) replies in 5
    minutes: a wall sample, no business series."""
    conn = new_db(tmp_path / "prom.db")
    take_samples()  # what this thread measured before: not this test's
    h = History(conn, office_hours, START)
    h.opened(m(4, 17, 10), "P")
    h.customer(m(4, 17, 10), "P", "K1")
    h.reply(m(7, 9, 25), "P", A1)
    h.opened(m(7, 10), "Q", account="b")
    h.customer(m(7, 10), "Q", "K2", account="b")
    h.reply(m(7, 10, 5), "Q", A1, account="b")
    conn.close()
    metrics = Metrics()
    metrics.observe_support(take_samples())

    def value(name: str, account: str, suffix: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(
            f"omnirelay_{name}_seconds{suffix}",
            {"channel": "api", "account": account, **labels})

    for name in ("first_response", "response"):  # the same run: both measured alike
        assert value(name, "a", "_count") == 1
        assert value(name, "a", "_sum") == 231_300
        assert value(name, "a", "_bucket", le="172800.0") == 0
        assert value(name, "a", "_bucket", le="604800.0") == 1
        assert value(f"{name}_business", "a", "_count") == 1
        assert value(f"{name}_business", "a", "_sum") == 4500
        assert value(f"{name}_business", "a", "_bucket", le="3600.0") == 0
        assert value(f"{name}_business", "a", "_bucket", le="7200.0") == 1
        assert value(name, "b", "_sum") == 300
        assert value(f"{name}_business", "b", "_count") is None
    # Nothing closed yet: no resolution on either clock.
    assert value("resolution", "a", "_count") is None
    assert value("resolution_business", "a", "_count") is None


def test_each_account_measures_with_the_hours_its_acknowledgements_use() -> None:
    config = parse_config(textwrap.dedent("""
        [automation.hours.office]
        timezone = "Asia/Seoul"
        weekdays = "09:00-18:00"
        [automation.hours.nights]
        timezone = "Asia/Seoul"
        monday = "22:00-24:00"
        [[automation.accounts]]
        account = "api:a"
        hours = "office"
        [[automation.accounts]]
        account = "b"
        hours = "nights"
        [[automation.accounts]]
        account = "*"
        language = "ko"
        """), environ={})
    hours = business_hours_for(config)
    assert hours is not None
    office, nights = config.automation.hours["office"], config.automation.hours["nights"]
    assert hours("api", "a") is office  # type:name
    assert hours("sms", "b") is nights and hours("email", "b") is nights  # name
    assert hours("email", "a") is None and hours("api", "c") is None  # "*", without hours
    # No entry names business hours: nothing to measure, no business samples at all.
    assert business_hours_for(parse_config('[automation]\nlanguage = "ko"\n',
                                           environ={})) is None
