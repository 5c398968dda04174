"""Times and durations as people type them into `jitproxy` commands and the admin API, and
durations as they are shown back. One parser for every command, so `--for`, `--until` and
`--ttl` accept the same forms everywhere.

    durations   30s, 15m, 2h, 1d, 1w, 1h30m (units required: a bare 90 is refused, because
                nobody can tell whether it meant seconds or minutes)
    moments     ISO 8601 with a zone (2026-12-07T14:50:00Z, ...+01:00), or without one
                (2026-12-07T14:50, read in the caller's zone: the CLI's is the local one and it
                says so), or a clock time HH:MM[:SS] (today, or tomorrow when that time of
                today has passed)
    past        what a search looks back to (`parse_past`): a duration ago (1h, 2d, 1h30m),
                "now", a day (2026-12-07: its start), a clock time (the last one: today, or
                yesterday when that time of today is still to come), or a moment as above

Pure: the caller passes `now` and the zone. Every refusal is a `TimeSpecError` (a ValueError)
whose message says what would be right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

__all__ = ["Moment", "TimeSpecError", "format_duration", "parse_duration", "parse_moment", "parse_past"]

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[wdhms])+")
_DURATION_PART = re.compile(r"(\d+)([wdhms])")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_DURATION_EXAMPLES = "30s, 15m, 2h, 1d, 1h30m"
_MOMENT_EXAMPLES = "14:50, 2026-12-07T14:50, 2026-12-07T14:50:00Z"
_PAST_EXAMPLES = "1h, 30m, 2d, 1w, 1h30m ago; now; 2026-12-07; 14:50; 2026-12-07T14:50:00Z"


class TimeSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Moment:
    """A parsed moment: `at` is aware; `assumed_zone` is True when the text named no zone and
    `at` took the caller's (so the caller can say which one it assumed)."""

    at: datetime
    assumed_zone: bool
    clock_time: bool  # HH:MM: today or tomorrow


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """`text` ("1h30m") as a positive timedelta."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if _BARE_NUMBER.fullmatch(value):
        raise _no_unit(text, value, what)
    if not _DURATION.fullmatch(value):
        raise TimeSpecError(f"{what}: {text!r} is not a duration ({_DURATION_EXAMPLES})")
    seconds = _seconds(value)
    if seconds <= 0:
        raise TimeSpecError(f"{what}: {text!r} is no time at all")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise TimeSpecError(f"{what}: {text!r} is too long") from None


def parse_moment(text: str, now: datetime, zone: tzinfo | None = None, what: str = "time") -> Moment:
    """`text` as a moment. A time without a zone is read in `zone` (None: this machine's local
    zone, with its daylight-saving rules on that date)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    value = text.strip() if isinstance(text, str) else ""
    clock = _CLOCK.fullmatch(value)
    if clock:
        return Moment(_clock_time(clock, now, zone, value, what), assumed_zone=True, clock_time=True)
    if _DATE_ONLY.fullmatch(value):
        raise TimeSpecError(f"{what}: {text!r} is a day, not a time: add the time of day, e.g. {value}T18:00")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TimeSpecError(f"{what}: {text!r} is not a time ({_MOMENT_EXAMPLES})") from None
    if moment.tzinfo is not None and moment.utcoffset() is not None:
        return Moment(moment, assumed_zone=False, clock_time=False)
    return Moment(_in_zone(moment, zone), assumed_zone=True, clock_time=False)


def parse_past(text: str, now: datetime, zone: tzinfo | None = None, what: str = "time") -> Moment:
    """`text` as a moment a search looks back to (see the module's docstring). A time or day
    without a zone is read in `zone` (None: this machine's local zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    value = text.strip() if isinstance(text, str) else ""
    lowered = value.lower()
    if lowered == "now":
        return Moment(now, assumed_zone=False, clock_time=False)
    if _BARE_NUMBER.fullmatch(lowered):
        raise _no_unit(text, lowered, what)
    clock = _CLOCK.fullmatch(value)
    if clock:
        return Moment(_clock_time(clock, now, zone, value, what, past=True), assumed_zone=True, clock_time=True)
    if _DURATION.fullmatch(lowered):
        try:
            return Moment(now - timedelta(seconds=_seconds(lowered)), assumed_zone=False, clock_time=False)
        except OverflowError:
            raise TimeSpecError(f"{what}: {text!r} reaches back before year 1") from None
    if _DATE_ONLY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise TimeSpecError(f"{what}: {text!r} is not a day of the calendar") from None
        return Moment(_in_zone(datetime.combine(day, time()), zone), assumed_zone=True, clock_time=False)
    try:
        return parse_moment(value, now, zone, what)
    except TimeSpecError:
        raise TimeSpecError(f"{what}: {text!r} is neither a span nor a time ({_PAST_EXAMPLES})") from None


def format_duration(span: timedelta | int | float) -> str:
    """"1h30m", "2d", "45s": the largest units first, zero parts left out, seconds shown only
    when there are some (so 30 s is "30s", never "0m")."""
    remaining = int(span.total_seconds() if isinstance(span, timedelta) else span)
    if remaining <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _no_unit(text: str, value: str, what: str) -> TimeSpecError:
    return TimeSpecError(f"{what}: {text!r} has no unit: add one, e.g. {value}m for minutes or {value}s for "
                         f"seconds ({_DURATION_EXAMPLES})")


def _seconds(duration: str) -> int:
    """The seconds of a duration already matched by _DURATION ("1h30m" -> 5400)."""
    return sum(int(count) * _UNITS[unit] for count, unit in _DURATION_PART.findall(duration))


def _in_zone(naive: datetime, zone: tzinfo | None) -> datetime:
    # astimezone() on a naive datetime reads it as local time, with that date's DST offset.
    return naive.astimezone() if zone is None else naive.replace(tzinfo=zone)


def _clock_time(clock: re.Match[str], now: datetime, zone: tzinfo | None, text: str, what: str,
                past: bool = False) -> datetime:
    """That time of today, or of tomorrow when it has passed (`past`: of yesterday when it is
    still to come)."""
    hour, minute, second = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
    try:
        of_day = time(hour, minute, second)
    except ValueError:
        raise TimeSpecError(f"{what}: {text!r} is not a time of day (00:00 to 23:59)") from None
    today: date = (now.astimezone() if zone is None else now.astimezone(zone)).date()
    candidate = _in_zone(datetime.combine(today, of_day), zone)
    if past and candidate > now:
        return _in_zone(datetime.combine(today - timedelta(days=1), of_day), zone)
    if not past and candidate <= now:
        return _in_zone(datetime.combine(today + timedelta(days=1), of_day), zone)
    return candidate
