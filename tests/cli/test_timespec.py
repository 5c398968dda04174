"""proxy.timespec: the one parser of times and durations every command uses, and how durations
are shown back. Local zones are set through TZ, as a person's machine would have them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from proxy.timespec import TimeSpecError, format_duration, parse_duration, parse_moment, parse_past

INDIA = timezone(timedelta(hours=5, minutes=30))



@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), (" 2H ", 7200),
])
def test_durations_with_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_a_bare_number_is_refused_with_a_hint_to_add_a_unit() -> None:
    with pytest.raises(TimeSpecError, match=r"--for: '90' has no unit: add one, e.g. 90m for minutes or 90s"):
        parse_duration("90", "--for")


@pytest.mark.parametrize("text", ["", "1.5h", "h", "1h 30m", "-1h", "0m", "soon"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(TimeSpecError, match="duration|no time at all|no unit"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "shown"), [
    (30, "30s"), (59, "59s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (90000, "1d1h"), (0, "0s"),
])
def test_durations_are_shown_with_seconds_when_there_are_some(seconds: int, shown: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == shown
    assert format_duration(seconds) == shown


def test_a_time_with_a_zone_is_taken_as_written() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    moment = parse_moment("2026-12-07T14:50:09Z", now)
    assert moment.at == datetime(2026, 12, 7, 14, 50, 9, tzinfo=UTC) and not moment.assumed_zone


def test_a_time_without_a_zone_is_read_in_the_local_zone_and_says_so(local_zone: None) -> None:
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    moment = parse_moment("2026-12-07T14:51", now)
    assert moment.assumed_zone and not moment.clock_time
    assert moment.at == datetime(2026, 12, 7, 14, 51, tzinfo=INDIA)
    assert moment.at.utcoffset() == timedelta(hours=5, minutes=30)


def test_a_time_without_a_zone_at_the_api_is_read_in_the_zone_it_gives() -> None:
    moment = parse_moment("2026-12-07T14:51", datetime(2026, 12, 7, tzinfo=UTC), UTC)
    assert moment.at == datetime(2026, 12, 7, 14, 51, tzinfo=UTC) and moment.assumed_zone


def test_a_clock_time_is_today_or_tomorrow_whichever_is_next(local_zone: None) -> None:
    # 06:00 UTC is 11:30 in the local zone.
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    later = parse_moment("14:50", now)
    assert later.clock_time and later.assumed_zone
    assert later.at == datetime(2026, 12, 7, 14, 50, tzinfo=INDIA)
    earlier = parse_moment("09:15:30", now)
    assert earlier.at == datetime(2026, 12, 8, 9, 15, 30, tzinfo=INDIA)
    assert parse_moment("11:30", now).at == datetime(2026, 12, 8, 11, 30, tzinfo=INDIA)  # now is not "next"


@pytest.mark.parametrize(("text", "message"), [
    ("25:00", "not a time of day"),
    ("2026-12-07", "a day, not a time: add the time of day, e.g. 2026-12-07T18:00"),
    ("tomorrow", "not a time"),
    ("", "not a time"),
])
def test_what_is_not_a_time_is_refused(text: str, message: str) -> None:
    with pytest.raises(TimeSpecError, match=message):
        parse_moment(text, datetime(2026, 12, 7, tzinfo=UTC), UTC, "--until")


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_moment("14:50", datetime(2026, 12, 7))


# -- what a search looks back to (the audit search's times: proxy.audit.search) -------------------------


def test_a_past_moment_is_a_span_ago_now_a_day_a_clock_time_or_a_time(local_zone: None) -> None:
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)  # 11:30 in the local zone
    assert parse_past("1h30m", now).at == now - timedelta(minutes=90)
    assert parse_past("1w", now).at == now - timedelta(weeks=1)
    assert parse_past("now", now).at == now
    day = parse_past("2026-12-01", now)
    assert day.at == datetime(2026, 12, 1, tzinfo=INDIA) and day.assumed_zone
    assert parse_past("2026-12-01T08:00:00Z", now).at == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert parse_past("2026-12-01T08:00", now, UTC).at == datetime(2026, 12, 1, 8, tzinfo=UTC)


def test_a_clock_time_looked_back_to_is_the_last_one(local_zone: None) -> None:
    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)  # 11:30 in the local zone
    earlier = parse_past("09:15", now)
    assert earlier.clock_time and earlier.at == datetime(2026, 12, 7, 9, 15, tzinfo=INDIA)  # today's
    assert parse_past("14:50", now).at == datetime(2026, 12, 6, 14, 50, tzinfo=INDIA)  # yesterday's
    assert parse_past("11:30", now).at == datetime(2026, 12, 7, 11, 30, tzinfo=INDIA)  # now is not "still to come"


@pytest.mark.parametrize(("text", "message"), [
    ("90", "since: '90' has no unit: add one, e.g. 90m for minutes or 90s for seconds"),
    ("yesterday", "since: 'yesterday' is neither a span nor a time"),
    ("25:00", "not a time of day"),
    ("2026-02-30", "not a day of the calendar"),
    ("99999999999999d", "reaches back before year 1"),
])
def test_what_no_search_could_look_back_to_is_refused(text: str, message: str) -> None:
    with pytest.raises(TimeSpecError, match=message):
        parse_past(text, datetime(2026, 12, 7, tzinfo=UTC), UTC, "since")

