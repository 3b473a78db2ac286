"""Parsing and formatting of the timestamps in envelopes and station payloads.

Every datetime returned here is timezone-aware and in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal

__all__ = ["format_utc", "parse_epoch", "parse_rfc3339"]

# RFC 3339 section 5.6 `date-time`. The offset group is optional here only so
# that a timestamp without an offset gets its own error message.
_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[Tt]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<offset_hour>\d{2}):(?P<offset_minute>\d{2}))?",
    re.ASCII,
)
# The usual form, in UTC with none, three or six fraction digits, which
# `datetime.fromisoformat` reads exactly as the full parser does.
_PLAIN_UTC = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{3}|\.\d{6})?Z", re.ASCII
)
_DECIMAL_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Seconds from the epoch to the limits of `datetime` (years 1 and 9999), checked
# before any arithmetic so that a huge exponent cannot allocate a huge integer.
_MIN_EPOCH_S = Decimal(int((datetime.min.replace(tzinfo=UTC) - _EPOCH).total_seconds()))
_MAX_EPOCH_S = Decimal(int((datetime.max.replace(tzinfo=UTC) - _EPOCH).total_seconds()))
_MAX_ECHO = 80


def _echo(text: str) -> str:
    if len(text) > _MAX_ECHO:
        text = text[:_MAX_ECHO] + "..."
    return repr(text)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that has an explicit offset or `Z`.

    Fractions finer than a microsecond are truncated. Raises ValueError naming
    the value when the text is not such a timestamp, including a leap second
    (`:60`), which `datetime` cannot represent.
    """
    if not isinstance(text, str):
        raise TypeError(f"a timestamp must be a string, got {type(text).__name__}")
    if _PLAIN_UTC.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass  # the full parser names what is wrong
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid timestamp {_echo(text)}: expected RFC 3339 such as "
            "2026-12-04T06:00:00.000Z"
        )
    if match["offset"] is None:
        raise ValueError(
            f"invalid timestamp {_echo(text)}: the UTC offset is missing; "
            "add Z or an offset such as +01:00"
        )
    offset = timedelta(0)
    if match["sign"] is not None:
        offset_hour = int(match["offset_hour"])
        offset_minute = int(match["offset_minute"])
        if offset_hour > 23 or offset_minute > 59:
            raise ValueError(f"invalid timestamp {_echo(text)}: offset out of range")
        offset = timedelta(hours=offset_hour, minutes=offset_minute)
        if match["sign"] == "-":
            offset = -offset
    fraction = match["fraction"] or ""
    microsecond = int(fraction[:6].ljust(6, "0"))
    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            microsecond,
            tzinfo=timezone(offset),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as error:
        raise ValueError(
            f"invalid timestamp {_echo(text)}: {error}; send a date and time "
            "that exists, such as 2026-12-04T06:00:00.000Z"
        ) from None


def format_utc(moment: datetime) -> str:
    """Format an aware datetime as UTC with milliseconds and `Z`.

    Microseconds are truncated to milliseconds. Raises ValueError for a naive
    datetime because its offset is unknown.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"cannot format naive datetime {moment.isoformat()} as UTC")
    utc = moment.astimezone(UTC)
    # isoformat ends with the offset "+00:00", which becomes "Z".
    return utc.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_epoch(value: int | float | str, unit: Literal["ms", "s"]) -> datetime:
    """Convert a Unix time in milliseconds or seconds to a UTC datetime.

    Accepts an int, a float or a decimal string such as "1796397348494".
    The result is rounded to the microsecond. Raises ValueError naming the value
    for a bool, a non-finite or non-numeric value, or a time outside years 1-9999.
    """
    if unit not in ("ms", "s"):
        raise ValueError(f"invalid epoch unit {unit!r}: expected 'ms' or 's'")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"invalid epoch time {value!r}: expected a number, "
            f"got {type(value).__name__}"
        )
    if isinstance(value, str):
        if _DECIMAL_NUMBER.fullmatch(value) is None:
            raise ValueError(f"invalid epoch time {_echo(value)}: not a decimal number")
        number = Decimal(value)
    else:
        number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"invalid epoch time {value!r}: not a finite number")
    seconds = number / 1000 if unit == "ms" else number
    if not _MIN_EPOCH_S <= seconds <= _MAX_EPOCH_S:
        raise ValueError(
            f"invalid epoch time {value!r} ({unit}): outside the years 1 to 9999"
        )
    microseconds = int((seconds * 1_000_000).to_integral_value())
    try:
        return _EPOCH + timedelta(microseconds=microseconds)
    except OverflowError:
        raise ValueError(
            f"invalid epoch time {value!r} ({unit}): outside the years 1 to 9999"
        ) from None
