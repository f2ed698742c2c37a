"""Business hours: is the team in, when does it next open, and what to tell the customer.

Pure arithmetic on aware datetimes (no clock, no I/O): the caller passes "now". Opening
hours are wall-clock times in the schedule's zone (``zoneinfo``), so "09:00" stays 9 AM
across a daylight-saving change and a Friday-evening message is answered Monday 9 AM
local, however many UTC hours lie between.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SEARCH_DAYS = 400  # a schedule closed for longer than this has no next opening

_INTERVAL = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)\s*")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class HoursError(ValueError):
    """A schedule or duration that cannot be read; the message says what is wrong."""


def parse_duration(value: str) -> timedelta:
    """``"90m"``, ``"2h"``, ``"1.5h"``, ``"3d"`` → a timedelta (positive)."""
    match = _DURATION.fullmatch(value)
    if not match:
        raise HoursError(f"{value!r} is not a duration like \"30m\", \"2h\" or \"3d\"")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise HoursError(f"{value!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_intervals(value: str) -> tuple[tuple[time, time | None], ...]:
    """``"09:00-12:00, 13:00-18:00"`` → intervals; ``"closed"`` or ``""`` → none.

    An end of ``24:00`` is midnight after the day (``None``). Intervals must not wrap past
    midnight (write the night as two days' intervals)."""
    text = value.strip().lower()
    if text in ("", "closed"):
        return ()
    intervals: list[tuple[time, time | None]] = []
    for part in text.split(","):
        match = _INTERVAL.fullmatch(part)
        if not match:
            raise HoursError(f"{part.strip()!r} is not an interval like \"09:00-18:00\"")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
            raise HoursError(f"{part.strip()!r} is not a time of day")
        start, end = time(h1, m1), None if h2 == 24 else time(h2, m2)
        if end is not None and end <= start:
            raise HoursError(f"{part.strip()!r} ends before it starts (split a night "
                             "across two days)")
        previous_end = intervals[-1][1] if intervals else time(0)
        if previous_end is None or start < previous_end:
            raise HoursError(f"{part.strip()!r} overlaps or comes before the previous one")
        intervals.append((start, end))
    return tuple(intervals)


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """A weekly schedule in one time zone, with holidays (closed all day)."""

    timezone: ZoneInfo
    weekly: tuple[tuple[tuple[time, time | None], ...], ...]  # Monday first, 7 entries
    holidays: frozenset[date] = frozenset()
    respond_within: timedelta = timedelta(hours=2)  # the promise while the team is in

    @classmethod
    def build(cls, timezone: str, days: Mapping[str, str], holidays: Sequence[str] = (),
              respond_within: str = "2h") -> BusinessHours:
        """From config strings; raises :class:`HoursError` naming what is wrong."""
        try:
            zone = ZoneInfo(timezone)
        except (ValueError, KeyError, OSError):
            raise HoursError(f"{timezone!r} is not a time zone name like \"Asia/Seoul\""
                             ) from None
        unknown = set(days) - set(WEEKDAYS)
        if unknown:
            raise HoursError(f"unknown day {sorted(unknown)[0]!r}; days are {', '.join(WEEKDAYS)}")
        weekly = tuple(parse_intervals(days.get(day, "closed")) for day in WEEKDAYS)
        parsed: set[date] = set()
        for holiday in holidays:
            try:
                parsed.add(date.fromisoformat(holiday))
            except ValueError:
                raise HoursError(f"holiday {holiday!r} is not a date like \"2026-12-25\""
                                 ) from None
        return cls(zone, weekly, frozenset(parsed), parse_duration(respond_within))

    def _day_intervals(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        """The day's open intervals as aware datetimes (none on a holiday)."""
        if day in self.holidays:
            return
        for start, end in self.weekly[day.weekday()]:
            opens = datetime.combine(day, start, self.timezone)
            closes = (datetime.combine(day + timedelta(days=1), time(0), self.timezone)
                      if end is None else datetime.combine(day, end, self.timezone))
            yield opens, closes

    def _intervals_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals that end after ``at``, in order (the current one first)."""
        local = at.astimezone(self.timezone).date()
        for offset in range(-1, SEARCH_DAYS):
            for opens, closes in self._day_intervals(local + timedelta(days=offset)):
                if _utc(closes) > _utc(at):
                    yield opens, closes

    def is_open(self, at: datetime) -> bool:
        """Whether the team is in at ``at`` (an aware datetime)."""
        for opens, _closes in self._intervals_from(at):
            return _utc(opens) <= _utc(at)
        return False

    def next_open(self, at: datetime) -> datetime | None:
        """When the team is next in, at or after ``at`` (``at`` itself when open)."""
        for opens, _closes in self._intervals_from(at):
            return max(opens, at.astimezone(self.timezone), key=_utc)
        return None

    def current_close(self, at: datetime) -> datetime | None:
        """When the interval ``at`` lies in closes (None when closed at ``at``)."""
        for opens, closes in self._intervals_from(at):
            return closes if _utc(opens) <= _utc(at) else None
        return None

    def add_business_time(self, at: datetime, duration: timedelta) -> datetime | None:
        """``at`` plus ``duration`` of open time (the clock stops while closed)."""
        left = duration
        for opens, closes in self._intervals_from(at):
            start = max(_utc(opens), _utc(at))
            span = _utc(closes) - start
            if left <= span:
                return (start + left).astimezone(self.timezone)
            left -= span
        return None

    def business_seconds(self, start: datetime, end: datetime) -> float:
        """Open time between two moments, in seconds (the business-hours clock; 0 when
        ``end`` is not after ``start``). Day by day over the whole span, with no horizon:
        a conversation open for two years is measured whole."""
        lo, hi = _utc(start), _utc(end)
        if hi <= lo:
            return 0.0
        total = timedelta(0)
        day = start.astimezone(self.timezone).date() - timedelta(days=1)
        last = end.astimezone(self.timezone).date()
        while day <= last:
            for opens, closes in self._day_intervals(day):
                span = min(_utc(closes), hi) - max(_utc(opens), lo)
                if span > timedelta(0):
                    total += span
            day += timedelta(days=1)
        return total.total_seconds()


@dataclass(frozen=True, slots=True)
class Estimate:
    """When a human will answer: the phrase for the customer and what it was built from."""

    in_hours: bool
    phrase: str
    opens_at: datetime | None  # the next opening when closed (None when open)
    variables: dict[str, str] = field(default_factory=dict)


def estimate(hours: BusinessHours, at: datetime, language: str) -> Estimate:
    """"within 2 hours" when the team is in and the promise fits before it leaves; else
    the next opening: "today after 9:00 AM", "tomorrow after…", "on the next business day
    after…" (Korean: "2시간 이내에", "오늘 오전 9시 이후", "다음 영업일 오전 9시 이후")."""
    words = _PHRASES.get(language, _PHRASES["en"])
    close = hours.current_close(at)
    if close is not None and _utc(at) + hours.respond_within <= _utc(close):
        phrase = words["within"].format(span=_span(hours.respond_within, language))
        return Estimate(True, phrase, None, {"eta": phrase, "in_hours": "yes"})
    # In, but leaving before the promise is kept: the opening after this interval.
    opens = hours.next_open(close if close is not None else at)
    if opens is None:
        phrase = words["later"]
        return Estimate(close is not None, phrase, None, {"eta": phrase, "in_hours": "no"})
    local_now = at.astimezone(hours.timezone).date()
    days_ahead = (opens.date() - local_now).days
    key = "today" if days_ahead == 0 else "tomorrow" if days_ahead == 1 else "next_day"
    clock = _clock(opens.time(), language)
    phrase = words[key].format(time=clock)
    return Estimate(close is not None, phrase, opens,
                    {"eta": phrase, "in_hours": "yes" if close is not None else "no",
                     "opens_at": f"{_date(opens.date(), language)} {clock}"})


_PHRASES: dict[str, dict[str, str]] = {
    "en": {"within": "within {span}", "today": "today after {time}",
           "tomorrow": "tomorrow after {time}",
           "next_day": "on the next business day after {time}",
           "later": "as soon as we are back"},
    "ko": {"within": "{span} 이내에", "today": "오늘 {time} 이후",
           "tomorrow": "내일 {time} 이후", "next_day": "다음 영업일 {time} 이후",
           "later": "영업 재개 후"},
}
_KO_DAYS = "월화수목금토일"


def _span(duration: timedelta, language: str) -> str:
    minutes = round(duration.total_seconds() / 60)
    if language == "ko":
        if minutes % 1440 == 0:
            return f"{minutes // 1440}일"
        if minutes % 60 == 0:
            return f"{minutes // 60}시간"
        return f"{minutes}분" if minutes < 60 else f"{minutes // 60}시간 {minutes % 60}분"
    if minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day{'s' * (days != 1)}"
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' * (hours != 1)}"
    return f"{minutes} minutes"


def _clock(moment: time, language: str) -> str:
    if language == "ko":
        half = "오전" if moment.hour < 12 else "오후"
        hour = moment.hour % 12 or 12
        return f"{half} {hour}시" + (f" {moment.minute}분" if moment.minute else "")
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"


def _date(day: date, language: str) -> str:
    if language == "ko":
        return f"{day.month}월 {day.day}일({_KO_DAYS[day.weekday()]})"
    return day.strftime("%A, %B ") + str(day.day)


def _utc(moment: datetime) -> datetime:
    """Compare and add in UTC: arithmetic on a zoned datetime is wall-clock arithmetic."""
    return moment.astimezone(ZoneInfo("UTC"))
