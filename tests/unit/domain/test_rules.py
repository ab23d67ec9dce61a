"""Unit tests of the pure rules (potato_runs.domain.rules): no I/O, no server."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.model import LAUNCH_DATE

NY = "America/New_York"
LONDON = "Europe/London"
KIRITIMATI = "Pacific/Kiritimati"
PAGO_PAGO = "Pacific/Pago_Pago"

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def reasons(errors: ValidationCollector) -> list[Reason]:
    return [v.reason for v in errors.violations]


# --- dates -------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2025-01-01", dt.date(2025, 1, 1)),
    ("2025-06-30", dt.date(2025, 6, 30)),
    ("2025-12-31", dt.date(2025, 12, 31)),
    ("2028-02-29", dt.date(2028, 2, 29)),   # leap day
    ("2024-02-29", dt.date(2024, 2, 29)),   # leap day (parsing is not the launch rule)
    ("2000-02-29", dt.date(2000, 2, 29)),   # divisible by 400: leap
])
def test_parse_date_accepts_real_calendar_dates(text: str, expected: dt.date) -> None:
    errors = ValidationCollector()
    assert rules.parse_date(text, errors, "local_date") == expected
    assert errors.violations == []


@pytest.mark.parametrize("text", [
    "2025-02-30", "2025-02-29", "2027-02-29", "2100-02-29",   # not leap years
    "2025-04-31", "2025-13-01", "2025-00-10", "2025-01-00", "2025-01-32",
])
def test_parse_date_rejects_impossible_dates(text: str) -> None:
    errors = ValidationCollector()
    assert rules.parse_date(text, errors, "local_date") is None
    assert reasons(errors) == [Reason.INVALID_DATE]
    assert errors.violations[0].field == "local_date"


@pytest.mark.parametrize("text", [
    "20250101",            # basic ISO format
    "2025-W01-1",          # ISO week date
    "2025-001",            # ordinal date
    "2025-1-1",            # no zero padding
    "2025-01-01T00:00",    # a time is not a date
    "2025-01-01 ",         # trailing space
    " 2025-01-01",
    "2025-01-01\n",        # `$` would match before a trailing newline
    "2025/01/01",
    "25-01-01",
    "+2025-01-01",
    "２０２５-０１-０１",  # full-width digits match \d but are not ASCII
    "2025-01-01Z",
    "june 1st",
])
def test_parse_date_is_strict_yyyy_mm_dd(text: str) -> None:
    errors = ValidationCollector()
    assert rules.parse_date(text, errors, "local_dates[3]") is None
    assert reasons(errors) == [Reason.INVALID_DATE]
    assert errors.violations[0].field == "local_dates[3]"


def test_parse_date_empty_is_missing() -> None:
    errors = ValidationCollector()
    assert rules.parse_date("", errors, "local_date") is None
    assert reasons(errors) == [Reason.MISSING_FIELD]


@given(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)))
def test_parse_date_round_trips_every_date(day: dt.date) -> None:
    errors = ValidationCollector()
    assert rules.parse_date(day.isoformat(), errors, "d") == day
    assert errors.violations == []


@given(st.text(max_size=14))
def test_parse_date_never_raises_and_accepts_only_its_isoformat(text: str) -> None:
    errors = ValidationCollector()
    parsed = rules.parse_date(text, errors, "d")
    if parsed is None:
        assert len(errors.violations) == 1
    else:
        assert errors.violations == []
        assert parsed.isoformat() == text


# --- user ids ------------------------------------------------------------------


def test_parse_user_id() -> None:
    errors = ValidationCollector()
    uid = uuid.uuid4()
    assert rules.parse_user_id(str(uid), errors) == uid
    assert rules.parse_user_id("not-a-uuid", errors) is None
    assert rules.parse_user_id("", errors) is None
    assert reasons(errors) == [Reason.INVALID_USER_ID, Reason.INVALID_USER_ID]


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_parse_user_id_refuses_a_trailing_newline(suffix: str) -> None:
    """`$` matches before a final newline: the whole value must be the UUID (a newline
    once got past the check and made uuid.UUID raise, an INTERNAL)."""
    errors = ValidationCollector()
    assert rules.parse_user_id(str(uuid.uuid4()) + suffix, errors) is None
    assert rules.parse_date("2025-01-01" + suffix, errors, "d") is None
    assert reasons(errors) == [Reason.INVALID_USER_ID, Reason.INVALID_DATE]


# --- zones ---------------------------------------------------------------------


@pytest.mark.parametrize("zone", [
    NY, LONDON, "Australia/Lord_Howe", "Asia/Kathmandu", KIRITIMATI, PAGO_PAGO, "UTC",
    "Etc/GMT+5",
])
def test_parse_zone_accepts_iana_names(zone: str) -> None:
    errors = ValidationCollector()
    assert rules.parse_zone(zone, errors) == zone
    assert errors.violations == []


@pytest.mark.parametrize("zone", [
    "", " ", "Mars/Olympus_Mons", "America/Gotham", "EST5EDT/", "America/New_York ",
    " America/New_York", "America",                  # a directory, not a zone
    "../etc", "../../etc/passwd", "/etc/passwd", "/usr/share/zoneinfo/UTC",
    "America/../Europe/London", "..", "Europe/London/..", "etc/passwd",
    "zone1970.tab", "tzdata.zi", "__init__.py",       # files that are not zones
    "Europe/London\x00", "a\x00b",
])
def test_parse_zone_rejects_unknown_names_and_paths(zone: str) -> None:
    errors = ValidationCollector()
    assert rules.parse_zone(zone, errors, "time_zone") is None
    assert reasons(errors) == [Reason.INVALID_TIME_ZONE]
    assert errors.violations[0].field == "time_zone"


@given(st.text(max_size=40))
def test_parse_zone_never_raises(text: str) -> None:
    errors = ValidationCollector()
    result = rules.parse_zone(text, errors)
    assert (result is None) == bool(errors.violations)
    if result is not None:
        assert ZoneInfo(result) is not None


# --- local dates -------------------------------------------------------------


@pytest.mark.parametrize("instant, zone, expected", [
    # 23:00 and 01:00 EST are consecutive local days although both are 2025-01-16 UTC.
    (utc(2025, 1, 16, 4, 0), NY, dt.date(2025, 1, 15)),    # 23:00 EST
    (utc(2025, 1, 16, 6, 0), NY, dt.date(2025, 1, 16)),    # 01:00 EST
    (utc(2025, 1, 16, 4, 59, 59), NY, dt.date(2025, 1, 15)),
    (utc(2025, 1, 16, 5, 0), NY, dt.date(2025, 1, 16)),    # local midnight
    # Summer (EDT, UTC-4): midnight is 04:00Z.
    (utc(2025, 7, 1, 3, 59), NY, dt.date(2025, 6, 30)),
    (utc(2025, 7, 1, 4, 0), NY, dt.date(2025, 7, 1)),
    # London: GMT in winter, BST (UTC+1) in summer.
    (utc(2025, 1, 31, 23, 30), LONDON, dt.date(2025, 1, 31)),
    (utc(2025, 6, 30, 23, 30), LONDON, dt.date(2025, 7, 1)),
    # The same instant on both sides of the date line.
    (utc(2025, 6, 15, 12, 0), KIRITIMATI, dt.date(2025, 6, 16)),   # +14
    (utc(2025, 6, 15, 12, 0), PAGO_PAGO, dt.date(2025, 6, 15)),    # -11
    (utc(2025, 6, 15, 10, 30), KIRITIMATI, dt.date(2025, 6, 16)),
    (utc(2025, 6, 15, 10, 30), PAGO_PAGO, dt.date(2025, 6, 14)),   # two dates apart
    # Odd offsets.
    (utc(2025, 6, 15, 18, 14), "Asia/Kathmandu", dt.date(2025, 6, 15)),   # 23:59 +5:45
    (utc(2025, 6, 15, 18, 15), "Asia/Kathmandu", dt.date(2025, 6, 16)),
    # Leap day.
    (utc(2028, 2, 29, 12, 0), NY, dt.date(2028, 2, 29)),
    (utc(2028, 2, 29, 10, 0), KIRITIMATI, dt.date(2028, 3, 1)),
    (utc(2028, 2, 29, 10, 0), PAGO_PAGO, dt.date(2028, 2, 28)),
])
def test_local_date_of(instant: dt.datetime, zone: str, expected: dt.date) -> None:
    assert rules.local_date_of(instant, zone) == expected


def test_local_date_of_accepts_any_aware_offset() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert rules.local_date_of(dt.datetime(2025, 1, 16, 1, 0, tzinfo=plus2), NY) == \
        dt.date(2025, 1, 15)


def test_local_date_of_rejects_naive() -> None:
    with pytest.raises(ValueError):
        rules.local_date_of(dt.datetime(2025, 1, 1, 12, 0), NY)


def _hours_of_local_day(day: dt.date, zone: str) -> dict[dt.date, int]:
    """Counts, hour by hour in UTC, how many hours map to each local date."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(zone)).astimezone(UTC)
    counts: dict[dt.date, int] = {}
    for h in range(-6, 30):
        d = rules.local_date_of(start + dt.timedelta(hours=h), zone)
        counts[d] = counts.get(d, 0) + 1
    return counts


@pytest.mark.parametrize("day, zone, hours", [
    (dt.date(2025, 3, 9), NY, 23),        # spring forward
    (dt.date(2025, 11, 2), NY, 25),       # fall back
    (dt.date(2026, 3, 8), NY, 23),
    (dt.date(2026, 11, 1), NY, 25),
    (dt.date(2025, 3, 30), LONDON, 23),
    (dt.date(2025, 10, 26), LONDON, 25),
    (dt.date(2025, 6, 1), NY, 24),
])
def test_dst_days_are_one_day_each(day: dt.date, zone: str, hours: int) -> None:
    counts = _hours_of_local_day(day, zone)
    assert counts[day] == hours
    assert counts[day - dt.timedelta(days=1)] >= 1 and counts[day + dt.timedelta(days=1)] >= 1
    assert set(counts) == {day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)}


@pytest.mark.parametrize("before, after, zone, days", [
    # 23:00 on the night before spring-forward and 01:00 after it.
    (utc(2025, 3, 9, 4, 0), utc(2025, 3, 10, 5, 0), NY, (dt.date(2025, 3, 8), dt.date(2025, 3, 10))),
    # Across the fall-back night: 01:30 happens twice and is one day.
    (utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6, 30), NY,
     (dt.date(2025, 11, 2), dt.date(2025, 11, 2))),
    (utc(2025, 3, 29, 23, 30), utc(2025, 3, 30, 0, 30), LONDON,
     (dt.date(2025, 3, 29), dt.date(2025, 3, 30))),
    (utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 1, 30), LONDON,
     (dt.date(2025, 10, 26), dt.date(2025, 10, 26))),
])
def test_local_date_across_dst_changes(before: dt.datetime, after: dt.datetime, zone: str,
                                       days: tuple[dt.date, dt.date]) -> None:
    assert (rules.local_date_of(before, zone), rules.local_date_of(after, zone)) == days


@given(st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2028, 12, 31),
                    timezones=st.just(UTC)),
       st.sampled_from([NY, LONDON, "Australia/Lord_Howe", "Asia/Kathmandu", KIRITIMATI,
                        PAGO_PAGO]))
def test_local_date_is_within_a_day_of_utc_and_monotonic(instant: dt.datetime, zone: str) -> None:
    d = rules.local_date_of(instant, zone)
    assert abs((d - instant.date()).days) <= 1
    later = rules.local_date_of(instant + dt.timedelta(hours=1), zone)
    assert d <= later <= d + dt.timedelta(days=1)
    assert rules.today_in(instant, zone) == d
    # Kiritimati (+14) is never behind Pago Pago (-11), and always exactly one day ahead.
    k, p = rules.local_date_of(instant, KIRITIMATI), rules.local_date_of(instant, PAGO_PAGO)
    assert 1 <= (k - p).days <= 2


# --- markable dates ----------------------------------------------------------


def test_check_markable() -> None:
    today = dt.date(2028, 2, 29)
    ok = ValidationCollector()
    rules.check_markable(LAUNCH_DATE, today, ok, "d")
    rules.check_markable(today, today, ok, "d")
    rules.check_markable(today, None, ok, "d")
    rules.check_markable(dt.date(2030, 1, 1), None, ok, "d")   # unknown zone: no future check
    assert ok.violations == []

    bad = ValidationCollector()
    rules.check_markable(dt.date(2024, 12, 31), today, bad, "local_dates[0]")
    rules.check_markable(dt.date(2028, 3, 1), today, bad, "local_dates[1]")
    rules.check_markable(dt.date(2024, 12, 31), None, bad, "local_dates[2]")
    assert [(v.field, v.reason) for v in bad.violations] == [
        ("local_dates[0]", Reason.DATE_BEFORE_LAUNCH),
        ("local_dates[1]", Reason.DATE_IN_FUTURE),
        ("local_dates[2]", Reason.DATE_BEFORE_LAUNCH),
    ]


# --- is_current ----------------------------------------------------------------


@pytest.mark.parametrize("end, today, expected", [
    (dt.date(2025, 6, 15), dt.date(2025, 6, 15), True),
    (dt.date(2025, 6, 14), dt.date(2025, 6, 15), True),
    (dt.date(2025, 6, 13), dt.date(2025, 6, 15), False),
    (dt.date(2025, 6, 16), dt.date(2025, 6, 15), True),    # after travel west: still current
    (dt.date(2025, 12, 31), dt.date(2026, 1, 1), True),    # across a year end
    (dt.date(2028, 2, 29), dt.date(2028, 3, 1), True),     # across the leap day
    (dt.date(2028, 2, 28), dt.date(2028, 3, 1), False),
    (dt.date(2027, 2, 28), dt.date(2027, 3, 1), True),
])
def test_is_current(end: dt.date, today: dt.date, expected: bool) -> None:
    assert rules.is_current(end, today) is expected


@given(st.dates(min_value=dt.date(2025, 1, 1), max_value=dt.date(2030, 1, 1)),
       st.integers(-5, 5))
def test_is_current_iff_it_ends_yesterday_or_later(today: dt.date, offset: int) -> None:
    assert rules.is_current(today - dt.timedelta(days=offset), today) is (offset <= 1)


# --- page sizes (AIP-158) ---------------------------------------------------------


@pytest.mark.parametrize("requested, expected", [
    (0, rules.DEFAULT_PAGE_SIZE),
    (1, 1),
    (rules.DEFAULT_PAGE_SIZE, rules.DEFAULT_PAGE_SIZE),
    (rules.MAX_PAGE_SIZE, rules.MAX_PAGE_SIZE),
    (rules.MAX_PAGE_SIZE + 1, rules.MAX_PAGE_SIZE),
    (2**31 - 1, rules.MAX_PAGE_SIZE),
])
def test_page_size(requested: int, expected: int) -> None:
    errors = ValidationCollector()
    assert rules.page_size(requested, errors) == expected
    assert errors.violations == []


@pytest.mark.parametrize("requested", [-1, -50, -(2**31)])
def test_negative_page_size_is_invalid(requested: int) -> None:
    errors = ValidationCollector()
    rules.page_size(requested, errors)
    assert reasons(errors) == [Reason.INVALID_PAGE_SIZE]
    assert errors.violations[0].field == "page_size"


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_page_size_is_always_in_bounds(requested: int) -> None:
    errors = ValidationCollector()
    size = rules.page_size(requested, errors)
    assert 1 <= size <= rules.MAX_PAGE_SIZE
    assert bool(errors.violations) is (requested < 0)


# --- page tokens -----------------------------------------------------------------


@given(st.uuids(), st.dates(min_value=dt.date(2025, 1, 1), max_value=dt.date(9999, 12, 31)))
def test_page_token_round_trip(user: uuid.UUID, cursor: dt.date) -> None:
    token = rules.encode_page_token(user, cursor)
    assert token and "=" not in token
    errors = ValidationCollector()
    assert rules.decode_page_token(token, user, errors) == cursor
    assert errors.violations == []


@given(st.uuids(), st.uuids(), st.dates(min_value=dt.date(2025, 1, 1)))
def test_page_token_of_another_user_is_rejected(owner: uuid.UUID, other: uuid.UUID,
                                                cursor: dt.date) -> None:
    token = rules.encode_page_token(owner, cursor)
    errors = ValidationCollector()
    result = rules.decode_page_token(token, other, errors)
    if owner == other:
        assert result == cursor
    else:
        assert result is None
        assert reasons(errors) == [Reason.INVALID_PAGE_TOKEN]
        assert errors.violations[0].field == "page_token"


def test_empty_page_token_means_first_page() -> None:
    errors = ValidationCollector()
    assert rules.decode_page_token("", uuid.uuid4(), errors) is None
    assert errors.violations == []


def _b64(payload: object) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


USER = uuid.UUID("7d4c1f0e-5b7a-4c1e-9a3e-2f1d0c9b8a77")


@pytest.mark.parametrize("token", [
    "garbage",
    "!!!!",
    "a",
    "%%%",
    "eyJ",                                             # truncated JSON
    _b64(b"\xff\xfe\xfd"),                             # not UTF-8
    _b64(b"not json"),
    _b64([1, 2, 3]),                                   # JSON, not an object
    _b64("string"),
    _b64({"v": 2, "u": str(USER), "e": "2025-06-15"}),   # unknown version
    _b64({"u": str(USER), "e": "2025-06-15"}),           # no version
    _b64({"v": 1, "u": str(USER)}),                      # no cursor
    _b64({"v": 1, "u": str(USER), "e": "2025-02-30"}),   # impossible cursor
    _b64({"v": 1, "u": str(USER), "e": None}),
    _b64({"v": 1, "u": str(USER).upper(), "e": "2025-06-15"}),
    _b64({"v": 1, "u": str(uuid.uuid4()), "e": "2025-06-15"}),
])
def test_garbage_page_tokens_are_rejected(token: str) -> None:
    errors = ValidationCollector()
    assert rules.decode_page_token(token, USER, errors) is None
    assert reasons(errors) == [Reason.INVALID_PAGE_TOKEN]


@given(st.text(max_size=80))
def test_decode_page_token_never_raises(token: str) -> None:
    errors = ValidationCollector()
    result = rules.decode_page_token(token, USER, errors)
    assert result is None or isinstance(result, dt.date)
    assert (result is None) == bool(errors.violations) or token == ""


@given(st.binary(max_size=60))
def test_decode_page_token_survives_arbitrary_base64(raw: bytes) -> None:
    errors = ValidationCollector()
    result = rules.decode_page_token(_b64(raw) or "x", USER, errors)
    assert (result is None) == bool(errors.violations)
