"""Event timestamps (RFC 3339 text) as epoch microseconds, and the range every reader holds.
Pure; the shim's shape check and the worker's decode both use it, so they agree."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# Avro readers turn the timestamps into their language's date type; Python's (the narrowest)
# spans years 1 to 9999, so every timestamp stays inside it.
_FIRST_US = (datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    microseconds=1
)
_LAST_US = (
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
) // timedelta(microseconds=1)
TIMESTAMP_US = range(_FIRST_US, _LAST_US + 1)
RECEIVED_AT_MS = range(_FIRST_US // 1000, _LAST_US // 1000 + 1)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp_micros(text: str) -> int:
    """An RFC 3339 timestamp (already checked by the shape) as UTC epoch microseconds.

    `datetime.fromisoformat` for the usual forms (fast, C); plain arithmetic for what it
    refuses and RFC 3339 allows: year 0000, the leap second `:60`. Fractions beyond
    microseconds are truncated."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _timestamp_micros_slow(text)
    if moment.tzinfo is None:  # not RFC 3339; the shape check keeps these out
        return _timestamp_micros_slow(text)
    return (moment - _EPOCH) // _MICROSECOND


def _timestamp_micros_slow(text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micros = int((match[7] or "0")[:6].ljust(6, "0"))
    offset_s = 0
    if match[8]:
        offset_s = (int(match[9]) * 3600 + int(match[10]) * 60) * (1 if match[8] == "+" else -1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_s) * 1_000_000 + micros


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


OUT_OF_RANGE = "must fall within the years 0001 to 9999 (UTC)"


def timestamp_error(text: str) -> str | None:
    """Why an RFC 3339 timestamp (its form already checked) cannot be an event's: outside
    years 0001..9999 in UTC (an offset can carry it across); None when it can."""
    try:
        return None if timestamp_micros(text) in TIMESTAMP_US else OUT_OF_RANGE
    except ValueError as exc:
        return str(exc)
