"""Tests of RFC 3339 and Unix time parsing and of UTC formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_worker.mapping import format_utc, parse_epoch, parse_rfc3339


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T06:00:00.000Z", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        ("2026-12-04T06:00:00Z", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        ("2026-12-04t06:00:00z", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        ("2026-12-04T07:00:00+01:00", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        ("2026-12-04T01:30:00-04:30", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        ("2026-12-04T06:00:00-00:00", datetime(2026, 12, 4, 6, tzinfo=UTC)),
        (
            "2026-12-04T06:00:00.123456789Z",
            datetime(2026, 12, 4, 6, 0, 0, 123456, tzinfo=UTC),
        ),
        ("2026-12-04T06:00:00.5Z", datetime(2026, 12, 4, 6, 0, 0, 500000, tzinfo=UTC)),
        ("2026-12-31T23:30:00-01:00", datetime(2027, 1, 1, 0, 30, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_accepts_offsets(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2026-12-04T06:00:00", "offset is missing"),
        ("2026-12-04T06:00:00.000", "offset is missing"),
        ("2026-12-04", "expected RFC 3339"),
        ("2026-12-04 06:00:00Z", "expected RFC 3339"),
        ("2026-12-04T06:00Z", "expected RFC 3339"),
        ("20261204T060000Z", "expected RFC 3339"),
        ("2026-12-04T06:00:00+0100", "expected RFC 3339"),
        ("2026-12-04T06:00:00+24:00", "offset out of range"),
        ("2026-13-04T06:00:00Z", "month"),
        ("2026-02-30T06:00:00Z", "day"),
        ("2026-12-04T24:00:00Z", "hour"),
        ("2026-12-04T23:59:60Z", "second"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        ("", "expected RFC 3339"),
        ("yesterday", "expected RFC 3339"),
    ],
)
def test_parse_rfc3339_rejects_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_rfc3339(text)
    assert repr(text) in str(raised.value)
    assert fragment in str(raised.value)


def test_parse_rfc3339_truncates_long_value_in_message() -> None:
    text = "x" * 500
    with pytest.raises(ValueError) as raised:
        parse_rfc3339(text)
    assert len(str(raised.value)) < 200


def test_parse_rfc3339_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        parse_rfc3339(1796397348494)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 12, 4, 6, tzinfo=UTC), "2026-12-04T06:00:00.000Z"),
        (
            datetime(2026, 12, 4, 6, 0, 0, 123999, tzinfo=UTC),
            "2026-12-04T06:00:00.123Z",
        ),
        (
            datetime(2026, 12, 4, 7, tzinfo=timezone(timedelta(hours=1))),
            "2026-12-04T06:00:00.000Z",
        ),
        (datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC), "0005-01-02T03:04:05.000Z"),
    ],
)
def test_format_utc(moment: datetime, expected: str) -> None:
    assert format_utc(moment) == expected


def test_format_utc_rejects_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_utc(datetime(2026, 12, 4, 6))


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1796397348494, "ms", "2026-12-04T15:15:48.494Z"),
        (1796397348494.0, "ms", "2026-12-04T15:15:48.494Z"),
        ("1796397348494", "ms", "2026-12-04T15:15:48.494Z"),
        ("1.796397348494e12", "ms", "2026-12-04T15:15:48.494Z"),
        (1796397348, "s", "2026-12-04T15:15:48.000Z"),
        (1796397348.494, "s", "2026-12-04T15:15:48.494Z"),
        ("1796397348.494", "s", "2026-12-04T15:15:48.494Z"),
        (0, "s", "1970-01-01T00:00:00.000Z"),
        (-1, "s", "1969-12-31T23:59:59.000Z"),
    ],
)
def test_parse_epoch(value: int | float | str, unit: str, expected: str) -> None:
    parsed = parse_epoch(value, unit)  # type: ignore[arg-type]
    assert parsed.tzinfo is UTC
    assert format_utc(parsed) == expected


@pytest.mark.parametrize(
    ("value", "unit", "fragment"),
    [
        (True, "ms", "got bool"),
        (False, "s", "got bool"),
        (None, "ms", "got NoneType"),
        ([1], "ms", "got list"),
        ("abc", "ms", "not a decimal number"),
        ("", "ms", "not a decimal number"),
        ("1_000", "s", "not a decimal number"),
        ("NaN", "s", "not a decimal number"),
        (float("nan"), "s", "not a finite number"),
        (float("inf"), "ms", "not a finite number"),
        ("1e999999999", "s", "outside the years 1 to 9999"),
        (10**20, "s", "outside the years 1 to 9999"),
        (-(10**20), "ms", "outside the years 1 to 9999"),
    ],
)
def test_parse_epoch_rejects_invalid(value: object, unit: str, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_epoch(value, unit)  # type: ignore[arg-type]
    assert fragment in str(raised.value)
    assert repr(value)[:20] in str(raised.value)


def test_parse_epoch_rejects_unknown_unit() -> None:
    with pytest.raises(ValueError, match="invalid epoch unit 'us'"):
        parse_epoch(1, "us")  # type: ignore[arg-type]


MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.just(UTC),
)


@given(moment=MOMENTS)
def test_property_format_then_parse_keeps_milliseconds(moment: datetime) -> None:
    expected = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parse_rfc3339(format_utc(moment)) == expected


@given(milliseconds=st.integers(min_value=-(10**13), max_value=10**14))
def test_property_epoch_ms_matches_timedelta(milliseconds: int) -> None:
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=milliseconds)
    assert parse_epoch(milliseconds, "ms") == expected
    assert parse_epoch(str(milliseconds), "ms") == expected


@given(moment=MOMENTS, digits=st.sampled_from([0, 3, 6]))
def test_property_utc_forms_match_offset_form(moment: datetime, digits: int) -> None:
    # "Z" takes the quick way, "+00:00" the full parser: both must agree.
    fraction = f".{moment.microsecond:06d}"[: digits + 1] if digits else ""
    base = moment.replace(tzinfo=None).isoformat(timespec="seconds") + fraction
    quick = parse_rfc3339(base + "Z")
    full = parse_rfc3339(base + "+00:00")
    assert quick == full
    assert quick.tzinfo is UTC
    assert full.tzinfo is UTC


@given(moment=MOMENTS)
def test_property_format_utc_fields(moment: datetime) -> None:
    text = format_utc(moment.astimezone(timezone(timedelta(hours=-5))))
    assert text == (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        f"{moment.microsecond // 1000:03d}Z"
    )
