"""Business-hour arithmetic: zones, weekends, holidays, DST, and the phrase a customer reads."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.automation.hours import BusinessHours, HoursError, estimate, parse_duration

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def shop(timezone: str = "Asia/Seoul", *, saturday: bool = True,
         **extra: object) -> BusinessHours:
    """Weekdays 09:00-18:00, and Saturday mornings 10:00-13:00."""
    days = {day: "09:00-18:00" for day in ("monday", "tuesday", "wednesday", "thursday",
                                            "friday")}
    if saturday:
        days["saturday"] = "10:00-13:00"
    return BusinessHours.build(timezone, days, **extra)  # type: ignore[arg-type]


def test_open_and_closed_in_the_schedules_own_zone() -> None:
    hours = shop()
    # Wednesday 2026-12-02 10:00 in Seoul is 01:00 UTC: open, whatever the server's zone.
    assert hours.is_open(datetime(2026, 12, 2, 1, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 12, 2, 9, 30, tzinfo=UTC))  # 18:30 Seoul
    assert hours.is_open(datetime(2026, 12, 2, 9, 0, tzinfo=SEOUL))  # opening minute
    assert not hours.is_open(datetime(2026, 12, 2, 18, 0, tzinfo=SEOUL))  # closing minute
    assert not hours.is_open(datetime(2026, 12, 6, 11, 0, tzinfo=SEOUL))  # Sunday


def test_friday_evening_is_answered_monday_morning_local() -> None:
    hours = shop(respond_within="2h")
    friday_evening = datetime(2026, 12, 4, 20, 15, tzinfo=SEOUL)
    saturday_afternoon = datetime(2026, 12, 5, 14, 0, tzinfo=SEOUL)
    assert hours.next_open(friday_evening) == datetime(2026, 12, 5, 10, 0, tzinfo=SEOUL)
    assert hours.next_open(saturday_afternoon) == datetime(2026, 12, 7, 9, 0, tzinfo=SEOUL)
    ko = estimate(hours, saturday_afternoon, "ko")
    assert not ko.in_hours
    assert ko.phrase == "다음 영업일 오전 9시 이후"
    assert estimate(hours, saturday_afternoon, "en").phrase == (
        "on the next business day after 9:00 AM")
    assert estimate(hours, friday_evening, "ko").phrase == "내일 오전 10시 이후"


def test_within_the_promise_while_in_and_not_when_closing_sooner() -> None:
    hours = shop(respond_within="2h")
    morning = datetime(2026, 12, 2, 10, 0, tzinfo=SEOUL)
    assert estimate(hours, morning, "en").phrase == "within 2 hours"
    assert estimate(hours, morning, "ko").phrase == "2시간 이내에"
    late = datetime(2026, 12, 2, 17, 0, tzinfo=SEOUL)  # in, but only one hour left
    result = estimate(hours, late, "ko")
    assert result.in_hours
    assert result.phrase == "내일 오전 9시 이후"
    early = datetime(2026, 12, 2, 7, 30, tzinfo=SEOUL)
    assert estimate(hours, early, "en").phrase == "today after 9:00 AM"
    half = BusinessHours.build("Asia/Seoul", {"monday": "09:00-18:00"}, respond_within="30m")
    assert estimate(half, datetime(2026, 11, 30, 9, 0, tzinfo=SEOUL), "ko").phrase == (
        "30분 이내에")


def test_holidays_are_closed_all_day() -> None:
    hours = shop(holidays=["2026-12-25", "2027-01-01"])
    christmas_eve = datetime(2026, 12, 24, 19, 0, tzinfo=SEOUL)  # Thursday evening
    assert not hours.is_open(datetime(2026, 12, 25, 11, 0, tzinfo=SEOUL))
    assert hours.next_open(christmas_eve) == datetime(2026, 12, 26, 10, 0, tzinfo=SEOUL)
    assert estimate(hours, christmas_eve, "en").phrase == (
        "on the next business day after 10:00 AM")


def test_daylight_saving_keeps_local_opening_times() -> None:
    hours = shop("America/New_York", saturday=False, respond_within="1h")
    # US DST starts Sunday 2027-03-14: Friday 09:00 is 14:00 UTC, Monday 09:00 is 13:00 UTC.
    friday_close = datetime(2027, 3, 12, 18, 0, tzinfo=NEW_YORK)
    monday = hours.next_open(friday_close)
    assert monday is not None
    assert monday.astimezone(UTC) == datetime(2027, 3, 15, 13, 0, tzinfo=UTC)
    # Business time across the change: 30 min left on Friday + 30 min on Monday.
    due = hours.add_business_time(datetime(2027, 3, 12, 17, 30, tzinfo=NEW_YORK),
                                  timedelta(hours=1))
    assert due is not None
    assert due.astimezone(UTC) == datetime(2027, 3, 15, 13, 30, tzinfo=UTC)
    # Autumn: DST ends Sunday 2026-11-01; a day is 25 hours long but opening stays 09:00.
    assert hours.next_open(datetime(2026, 10, 31, 14, 0, tzinfo=NEW_YORK)) == datetime(
        2026, 11, 2, 9, 0, tzinfo=NEW_YORK)
    assert hours.business_seconds(datetime(2026, 10, 30, 17, 0, tzinfo=NEW_YORK),
                                  datetime(2026, 11, 2, 10, 0, tzinfo=NEW_YORK)) == 2 * 3600


def test_business_time_spans_nights_weekends_and_a_lunch_break() -> None:
    hours = BusinessHours.build("Asia/Seoul", {"monday": "09:00-12:00, 13:00-18:00",
                                               "friday": "09:00-18:00"})
    start = datetime(2026, 11, 30, 11, 30, tzinfo=SEOUL)  # Monday
    assert hours.add_business_time(start, timedelta(hours=1)) == datetime(
        2026, 11, 30, 13, 30, tzinfo=SEOUL)
    assert hours.add_business_time(start, timedelta(hours=8)) == datetime(
        2026, 12, 4, 11, 30, tzinfo=SEOUL)  # Monday's 5.5 h, then 2.5 h on Friday
    assert hours.business_seconds(start, datetime(2026, 11, 30, 13, 30, tzinfo=SEOUL)) == 3600


def test_a_schedule_with_no_opening_says_so_instead_of_a_date() -> None:
    hours = BusinessHours.build("UTC", {})
    assert hours.next_open(datetime(2026, 12, 2, tzinfo=UTC)) is None
    assert estimate(hours, datetime(2026, 12, 2, tzinfo=UTC), "en").phrase == (
        "as soon as we are back")


@pytest.mark.parametrize(("days", "fragment"), [
    ({"monday": "18:00-09:00"}, "ends before it starts"),
    ({"monday": "9-18"}, "not an interval"),
    ({"monday": "09:00-12:00, 11:00-13:00"}, "overlaps"),
    ({"mon": "09:00-18:00"}, "unknown day"),
    ({"monday": "25:00-26:00"}, "not a time of day"),
])
def test_bad_schedules_say_what_is_wrong(days: dict[str, str], fragment: str) -> None:
    with pytest.raises(HoursError, match=fragment):
        BusinessHours.build("Asia/Seoul", days)


def test_bad_zone_holiday_and_duration() -> None:
    with pytest.raises(HoursError, match="time zone"):
        BusinessHours.build("Mars/Olympus", {})
    with pytest.raises(HoursError, match="holiday"):
        BusinessHours.build("UTC", {}, holidays=["25.12.2026"])
    with pytest.raises(HoursError, match="duration"):
        parse_duration("two hours")
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1.5h") == timedelta(minutes=90)


_WEEKDAYS = dict.fromkeys(("monday", "tuesday", "wednesday", "thursday", "friday"),
                          "09:00-18:00")
_SEOUL_SHOP = BusinessHours.build("Asia/Seoul", _WEEKDAYS, ["2026-12-25"])
_NEW_YORK_SHOP = BusinessHours.build("America/New_York", _WEEKDAYS)
_ALL_SUNDAY = BusinessHours.build("America/New_York", {"sunday": "00:00-24:00"})
_NIGHTS = BusinessHours.build("Asia/Seoul", {"monday": "22:00-24:00",
                                             "tuesday": "00:00-06:00"})
_NEVER = BusinessHours.build("Asia/Seoul", {})
H = 3600


def _seoul(day: int, hour: int, minute: int = 0, month: int = 11, year: int = 2026
           ) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SEOUL)


def _new_york(month: int, day: int, hour: int, year: int = 2027) -> datetime:
    return datetime(year, month, day, hour, tzinfo=NEW_YORK)


# 2026-11-30 is a Monday; 2026-12-25 (a Friday) is a holiday of the Seoul shop.
@pytest.mark.parametrize(("hours", "start", "end", "seconds"), [
    (_SEOUL_SHOP, _seoul(30, 10), _seoul(30, 11, 30), 1.5 * H),  # inside one interval
    (_SEOUL_SHOP, _seoul(30, 7), _seoul(30, 10), 1 * H),  # starts before opening
    (_SEOUL_SHOP, _seoul(30, 17), _seoul(30, 22), 1 * H),  # ends after closing
    (_SEOUL_SHOP, _seoul(30, 19), _seoul(1, 8, month=12), 0),  # a night, closed throughout
    (_SEOUL_SHOP, _seoul(4, 17, 30, 12), _seoul(7, 9, 30, 12), 1 * H),  # Fri → Mon
    (_SEOUL_SHOP, _seoul(5, 10, 0, 12), _seoul(6, 20, 0, 12), 0),  # the weekend
    (_SEOUL_SHOP, _seoul(24, 17, 0, 12), _seoul(28, 10, 0, 12), 2 * H),  # over a holiday
    (_SEOUL_SHOP, _seoul(30, 0), _seoul(7, 0, month=12), 45 * H),  # a whole week
    (_SEOUL_SHOP, _seoul(30, 11), _seoul(30, 10), 0),  # the end before the start
    # Two years, beyond any horizon of the next-opening search: 104 weeks of 45 hours
    # but the holiday's 9.
    (_SEOUL_SHOP, datetime(2026, 1, 5, tzinfo=SEOUL), datetime(2028, 1, 3, tzinfo=SEOUL),
     (104 * 45 - 9) * H),
    # The zone's wall clock across DST: Friday 17:00 EST to Monday 10:00 EDT is 2 hours
    # (the weekend lost an hour, the opening stays 09:00 local).
    (_NEW_YORK_SHOP, _new_york(3, 12, 17), _new_york(3, 15, 10), 2 * H),
    (_NEW_YORK_SHOP, _new_york(10, 30, 17, 2026), _new_york(11, 2, 10, 2026), 2 * H),
    # A day open around the clock is 23 hours long in spring, 25 in autumn.
    (_ALL_SUNDAY, _new_york(3, 14, 0), _new_york(3, 15, 0), 23 * H),
    (_ALL_SUNDAY, _new_york(11, 1, 0, 2026), _new_york(11, 2, 0, 2026), 25 * H),
    # A night shift written as two days' intervals counts across midnight.
    (_NIGHTS, _seoul(30, 23), _seoul(1, 5, month=12), 6 * H),
    (_NIGHTS, _seoul(30, 12), _seoul(1, 12, month=12), 8 * H),
    (_NEVER, _seoul(30, 0), datetime(2027, 11, 30, tzinfo=SEOUL), 0),  # never opens
    # Instants in another zone are the same instants: 01:00 UTC is 10:00 in Seoul.
    (_SEOUL_SHOP, datetime(2026, 11, 30, 1, tzinfo=UTC), _seoul(30, 12), 2 * H),
])
def test_business_seconds_between_two_instants(hours: BusinessHours, start: datetime,
                                               end: datetime, seconds: float) -> None:
    assert hours.business_seconds(start, end) == seconds
