"""The support metrics of a period, read from the aggregates (docs/stats.md).

A read touches the quarter hours of the period only (plus one SUM over older ones for
the open conversations), never the events: a month is a few thousand rows whatever the
traffic. Medians and p90s are exact, over the stored samples (linear interpolation
between the two nearest ranks, numpy's default and Excel's PERCENTILE.INC).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from gateway.store.jobs.stats import BUCKET_SECONDS, BUCKETS_A_DAY, BUSINESS, DURATIONS

GROUPINGS = ("channel", "account", "agent", "day")
# The durations' clocks: wall-clock time, or only the time inside the account's business
# hours (the samples written beside the wall-clock ones, docs/stats.md).
CLOCKS = ("wall", "business")
_COUNTERS = ("created", "closes", "resolved", "with_reply", "one_touch", "resolved_msgs",
             "csat_sent", "csat_answers", "csat_sum", "csat_good")

# Per grouping: (bucket, channel, account, agent as selected, the GROUP BY).
_GROUP_COLUMNS: dict[str | None, tuple[str, str]] = {
    None: ("0, '', '', ''", ""),
    "channel": ("0, channel, '', ''", "GROUP BY channel"),
    "account": ("0, channel, account, ''", "GROUP BY channel, account"),
    "agent": ("0, '', '', agent", "GROUP BY agent"),
    "day": ("bucket, '', '', ''", "GROUP BY bucket"),
}

JSON = dict[str, Any]
Key = str | None
AccountKeys = Callable[[str, str], str]  # (channel, account) -> an account group's key


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """A period (unix seconds, whole quarter hours, ``start`` inclusive, ``end``
    exclusive), a grouping and the time zone of its days."""

    start: int
    end: int
    group_by: str | None = None
    time_zone: str = "UTC"
    # An account group's key; None: the name, or "channel:name" when the period has the
    # name on several channels.
    account_keys: AccountKeys | None = None
    clock: str = "wall"  # one of CLOCKS


@dataclass(slots=True)
class _Group:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    samples: dict[str, list[bytes]] = field(
        default_factory=lambda: {name: [] for name in DURATIONS})
    open: int = 0
    writers: int | None = None


def compute_stats(conn: sqlite3.Connection, query: StatsQuery) -> JSON:
    """``GET /v1/stats``'s answer without ``from``/``to`` (the caller's formatting)."""
    first, last = query.start // BUCKET_SECONDS, -(-query.end // BUCKET_SECONDS)
    counted, timed = _keys(conn, "stat_buckets"), _keys(conn, "stat_durations")
    key_of = _key_function(query, counted + timed)
    groups: dict[Key, _Group] = {}
    if query.group_by == "day":
        for day in _days(conn, query):
            groups[day.isoformat()] = _Group()
    elif query.group_by is None:
        groups[None] = _Group()
    zone = ZoneInfo(query.time_zone)
    # Per day, the day's range of buckets (it is the group); else the whole period.
    spans: list[tuple[int, int]] = (
        [(max(first, _local_midnight(day, zone) // BUCKET_SECONDS),
          min(last, _local_midnight(day, zone, 1) // BUCKET_SECONDS))
         for day in sorted(key for key in groups if key is not None)]
        if query.group_by == "day" else [(first, last)])
    # One range of the key per (channel, account, agent) and span: summed and concatenated
    # by SQLite without sorting (group_concat joins the blobs byte for byte, as text; the
    # cast makes them blobs again).
    sums = ("SELECT " + ", ".join(f"SUM({name})" for name in _COUNTERS)
            + " FROM stat_buckets WHERE channel = ? AND account = ? AND agent = ? "
            "AND bucket >= ? AND bucket < ?")
    columns = DURATIONS if query.clock == "wall" else tuple(BUSINESS[n] for n in DURATIONS)
    joins = ("SELECT " + ", ".join(f"CAST(group_concat({name}, '') AS BLOB)"
                                   for name in columns)
             + " FROM stat_durations WHERE channel = ? AND account = ? AND agent = ? "
             "AND bucket >= ? AND bucket < ?")
    for start, end in spans:
        for channel, account, agent in counted:
            row = conn.execute(sums, (channel, account, agent, start, end)).fetchone()
            if row[0] is None:
                continue
            counters = groups.setdefault(key_of(start, channel, account, agent),
                                         _Group()).counters
            for i, name in enumerate(_COUNTERS):
                counters[name] += row[i]
        for channel, account, agent in timed:
            row = conn.execute(joins, (channel, account, agent, start, end)).fetchone()
            if row[0] is None:
                continue
            samples = groups.setdefault(key_of(start, channel, account, agent),
                                        _Group()).samples
            for i, name in enumerate(DURATIONS):
                if row[i]:
                    samples[name].append(row[i])
    _open_conversations(conn, query, first, last, key_of, groups)
    _writers(conn, query, first, last, key_of, groups)
    ordered = sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))
    return {"group_by": query.group_by, "clock": query.clock,
            "groups": [{"key": key, **_metrics(group)} for key, group in ordered]}


def _keys(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, str]]:
    """Every (channel, account, agent) of a table, one seek of its key each."""
    keys: list[tuple[str, str, str]] = []
    row = conn.execute(f"SELECT channel, account, agent FROM {table} "
                       "ORDER BY channel, account, agent LIMIT 1").fetchone()
    while row is not None:
        keys.append((row[0], row[1], row[2]))
        row = conn.execute(f"SELECT channel, account, agent FROM {table} WHERE "
                           "(channel, account, agent) > (?, ?, ?) "
                           "ORDER BY channel, account, agent LIMIT 1", keys[-1]).fetchone()
    return keys


def _key_function(query: StatsQuery, seen: Iterable[tuple[str, str, str]]
                  ) -> Callable[[int, str, str, str], Key]:
    """How a row's (bucket, channel, account, agent) maps to its group's key."""
    grouping = query.group_by
    if grouping == "channel":
        return lambda bucket, channel, account, agent: channel
    if grouping == "agent":
        return lambda bucket, channel, account, agent: agent or None
    if grouping == "account":
        channels_of: dict[str, set[str]] = {}
        for channel, account, _agent in seen:
            channels_of.setdefault(account, set()).add(channel)
        named = query.account_keys

        def account_key(bucket: int, channel: str, account: str, agent: str) -> Key:
            if named is not None:
                return named(channel, account)
            return f"{channel}:{account}" if len(channels_of.get(account, ())) > 1 else account
        return account_key
    if grouping == "day":
        zone = ZoneInfo(query.time_zone)
        days: dict[int, str] = {}

        def day_key(bucket: int, channel: str, account: str, agent: str) -> Key:
            day = days.get(bucket)
            if day is None:
                day = days[bucket] = datetime.fromtimestamp(
                    bucket * BUCKET_SECONDS, zone).date().isoformat()
            return day
        return day_key
    return lambda bucket, channel, account, agent: None


def _days(conn: sqlite3.Connection, query: StatsQuery) -> list[date]:
    """The local days of the period, from the first stored data on and up to now (or the
    newest data): a period reaching far into the past or the future has no empty days."""
    zone = ZoneInfo(query.time_zone)
    # Every conversation opens with a stat_open row, whose key starts with the bucket.
    oldest, newest = conn.execute("SELECT MIN(bucket), MAX(bucket) FROM stat_open").fetchone()
    if oldest is None:
        return []
    now = datetime.now(UTC).timestamp()
    start = max(query.start, oldest * BUCKET_SECONDS)
    end = min(query.end, max(now, (newest + 1) * BUCKET_SECONDS))
    if start >= end:
        return []
    day = datetime.fromtimestamp(start, zone).date()
    last = datetime.fromtimestamp(end - 1, zone).date()
    days = []
    while day <= last:
        days.append(day)
        day += timedelta(days=1)
    return days


def _open_at(conn: sqlite3.Connection, bucket: int, columns: str, group: str
             ) -> list[tuple[Any, ...]]:
    """Conversations open at the start of ``bucket`` (``columns``: the group's, as in
    _GROUP_COLUMNS without the bucket): whole days from the day sums, then the quarter
    hours of its own day."""
    day = bucket // BUCKETS_A_DAY
    return conn.execute(
        f"SELECT {columns}, SUM(delta) FROM (SELECT channel, account, agent, delta FROM "
        f"stat_open_days WHERE day < ? UNION ALL SELECT channel, account, agent, delta "
        f"FROM stat_open WHERE bucket >= ? AND bucket < ?) {group}",
        (day, day * BUCKETS_A_DAY, bucket)).fetchall()


def _open_conversations(conn: sqlite3.Connection, query: StatsQuery, first: int, last: int,
                        key_of: Callable[[int, str, str, str], Key],
                        groups: dict[Key, _Group]) -> None:
    """Conversations open at the end of the period (of each day, grouped by day)."""
    if query.group_by != "day":
        columns, group = _GROUP_COLUMNS[query.group_by]
        for row in _open_at(conn, last, columns.split(", ", 1)[1], group):
            if row[3]:
                groups.setdefault(key_of(last, row[0], row[1], row[2]), _Group()).open += row[3]
        return
    [(_, _, _, running)] = _open_at(conn, first, "'', '', ''", "")
    running = running or 0
    change: dict[Key, int] = {}
    for bucket, delta in conn.execute(
            "SELECT bucket, SUM(delta) FROM stat_open WHERE bucket >= ? AND bucket < ? "
            "GROUP BY bucket", (first, last)):
        day = key_of(bucket, "", "", "")
        change[day] = change.get(day, 0) + delta
    for day in sorted(key for key in groups if key is not None):
        running += change.get(day, 0)
        groups[day].open = running


def _writers(conn: sqlite3.Connection, query: StatsQuery, first: int, last: int,
             key_of: Callable[[int, str, str, str], Key], groups: dict[Key, _Group]) -> None:
    """Distinct customers who wrote, for the contact rate (none per agent): the writes of
    the period whose customer's write before them (at that level) is older than it."""
    grouping = query.group_by
    if grouping == "day":
        zone = ZoneInfo(query.time_zone)
        for day in sorted(key for key in groups if key is not None):
            start = max(first, _local_midnight(day, zone) // BUCKET_SECONDS)
            end = min(last, _local_midnight(day, zone, 1) // BUCKET_SECONDS)
            groups[day].writers = conn.execute(
                "SELECT COUNT(*) FROM stat_writers WHERE bucket >= ?1 AND bucket < ?2 AND "
                "(prev_any IS NULL OR prev_any < ?1)", (start, end)).fetchone()[0]
    elif grouping in ("channel", "account"):
        level, columns, grouped = (
            ("prev_channel", "channel, ''", "channel") if grouping == "channel"
            else ("prev_account", "channel, account", "channel, account"))
        for channel, account, count in conn.execute(
                f"SELECT {columns}, COUNT(*) FROM stat_writers WHERE bucket >= ?1 AND "
                f"bucket < ?2 AND ({level} IS NULL OR {level} < ?1) GROUP BY {grouped}",
                (first, last)):
            group = groups.setdefault(key_of(first, channel, account, ""), _Group())
            group.writers = (group.writers or 0) + count
    else:  # one total; grouped by agent, the customers go with the unattributed group
        groups.setdefault(None, _Group()).writers = conn.execute(
            "SELECT COUNT(*) FROM stat_writers WHERE bucket >= ?1 AND bucket < ?2 AND "
            "(prev_any IS NULL OR prev_any < ?1)", (first, last)).fetchone()[0]


def _local_midnight(day_key: str, zone: ZoneInfo, days_after: int = 0) -> int:
    """The unix time a local day (``YYYY-MM-DD``) starts, ``days_after`` days later."""
    day = date.fromisoformat(day_key) + timedelta(days=days_after)
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def duration(blobs: list[bytes]) -> JSON:
    """``{"median", "p90", "count"}`` in seconds (null without samples)."""
    if not blobs:
        return {"median": None, "p90": None, "count": 0}
    values = np.frombuffer(b"".join(blobs), dtype="<f8")
    median, p90 = np.quantile(values, [0.5, 0.9])
    return {"median": round(float(median), 3), "p90": round(float(p90), 3),
            "count": int(values.size)}


def _ratio(part: int, whole: int | None) -> float | None:
    return round(part / whole, 4) if whole else None


def _metrics(group: _Group) -> JSON:
    c = group.counters
    return {
        "conversations_created": c["created"],
        "open_conversations": group.open,
        "first_response_time": duration(group.samples["frt"]),
        "response_time": duration(group.samples["response"]),
        "resolution_time": duration(group.samples["resolution"]),
        "one_touch_resolution_rate": _ratio(c["one_touch"], c["with_reply"]),
        "automatic_resolutions": c["resolved"] - c["with_reply"],
        "messages_per_conversation": _ratio(c["resolved_msgs"], c["resolved"]),
        "conversations_closed": c["closes"],
        "contact_rate": _ratio(c["created"], group.writers),
        "csat": {
            "surveys_sent": c["csat_sent"],
            "responses": c["csat_answers"],
            "response_rate": _ratio(c["csat_answers"], c["csat_sent"]),
            "average_score": _ratio(c["csat_sum"], c["csat_answers"]),
            "satisfaction_score": _ratio(c["csat_good"], c["csat_answers"]),
        },
    }


def period(start: datetime | None, end: datetime | None, now: datetime | None = None,
           days: int = 7, *, empty_ok: bool = False) -> tuple[int, int]:
    """A period as unix seconds on quarter hours: the given bounds rounded down to one
    (the answer names the period used), else the last ``days`` days up to the next quarter
    hour. An end not after the start raises ValueError, or (``empty_ok``) is the empty
    period at the start."""
    if end is None:
        moment = (now or datetime.now(UTC)).timestamp()
        end_s = -(-int(moment) // BUCKET_SECONDS) * BUCKET_SECONDS
    else:
        end_s = int(end.timestamp() // BUCKET_SECONDS) * BUCKET_SECONDS
    if start is None:
        start_s = end_s - days * 86_400
    else:
        start_s = int(start.timestamp() // BUCKET_SECONDS) * BUCKET_SECONDS
    if start_s >= end_s:
        if empty_ok:
            return start_s, start_s
        raise ValueError("from must be before to (both rounded down to the quarter hour)")
    return start_s, end_s
