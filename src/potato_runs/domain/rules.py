"""Business rules as pure functions: parsing, time zones and date limits."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
import zoneinfo
from functools import lru_cache

from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.model import LAUNCH_DATE, Run

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH_RE = re.compile(r"[0-9]{4}-[0-9]{2}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_ZONE_LENGTH = 64
MAX_PAGE_TOKEN_LENGTH = 256
ECHO_CHARS = 40
"""How much of a bad value an error message repeats (ASCII-escaped)."""


def echo(value: str) -> str:
    """A bad value as an error may quote it: short and pure ASCII, so status
    trailers stay far below gRPC's metadata limits whatever the client sent."""
    text = ascii(value[:ECHO_CHARS])
    return text + ("..." if len(value) > ECHO_CHARS else "")


def canonical_uuid(value: str) -> uuid.UUID | None:
    """The UUID of its canonical 8-4-4-4-12 hex spelling (the only one accepted on the
    wire, so one id has one spelling: user ids, request ids), else None."""
    return uuid.UUID(value) if _UUID_RE.fullmatch(value) else None


UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"


def parse_user_id(value: str, errors: ValidationCollector, field: str = "user_id") -> uuid.UUID | None:
    """Accepts only the canonical 8-4-4-4-12 hex form, so one user has one spelling."""
    if not value:
        errors.add(field, Reason.INVALID_USER_ID, "user_id is required (a UUID string)")
        return None
    parsed = canonical_uuid(value)
    if parsed is None:
        errors.add(field, Reason.INVALID_USER_ID,
                   f"{echo(value)} is not a UUID of the form {UUID_SHAPE}")
    return parsed


def parse_date(value: str, errors: ValidationCollector, field: str) -> dt.date | None:
    """Parses "YYYY-MM-DD" strictly (ASCII digits; no week dates, no times)."""
    if not value:
        errors.add(field, Reason.MISSING_FIELD, f"{field} is required (YYYY-MM-DD)")
        return None
    if not _DATE_RE.fullmatch(value):
        errors.add(field, Reason.INVALID_DATE, f"{echo(value)} is not a date of the form YYYY-MM-DD")
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        errors.add(field, Reason.INVALID_DATE, f"{echo(value)} is not a real calendar date")
        return None


@lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


@lru_cache(maxsize=1)
def region_zones() -> frozenset[str]:
    """The zone names the service accepts: IANA region names ("Area/Location") plus
    UTC and GMT. Bare names such as CET, EET, MET, WET, EST or EST5EDT are refused:
    PostgreSQL reads several of them as fixed-offset abbreviations while the IANA
    database gives them daylight saving, so one instant would get two dates.
    `posix/...`, `right/...`, `localtime`, `posixrules` and `Factory` are not places."""
    return frozenset(
        z for z in zoneinfo.available_timezones()
        if (z in ("UTC", "GMT") or ("/" in z and not z.startswith(("posix/", "right/"))))
    )


def parse_zone(value: str, errors: ValidationCollector, field: str = "time_zone") -> str | None:
    """Validates an IANA region zone name, e.g. "America/New_York"."""
    if not value or len(value) > MAX_ZONE_LENGTH or value not in region_zones():
        errors.add(field, Reason.INVALID_TIME_ZONE,
                   f"{echo(value)} is not an IANA region time zone name such as "
                   f"America/New_York, or UTC")
        return None
    try:
        _zone(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        errors.add(field, Reason.INVALID_TIME_ZONE, f"{echo(value)} cannot be loaded")
        return None
    return value


def local_date_of(instant: dt.datetime, zone: str) -> dt.date:
    """The calendar date of an instant in a zone (midnight-to-midnight local days)."""
    if instant.tzinfo is None:
        raise ValueError("instant must be aware")
    return instant.astimezone(_zone(zone)).date()


def today_in(now: dt.datetime, zone: str) -> dt.date:
    return local_date_of(now, zone)


def check_markable(
    day: dt.date, today: dt.date | None, errors: ValidationCollector, field: str
) -> None:
    """Dates must be on or after launch and, when the zone is known, not in the future."""
    if day < LAUNCH_DATE:
        errors.add(field, Reason.DATE_BEFORE_LAUNCH,
                   f"{day.isoformat()} is before {LAUNCH_DATE.isoformat()}")
    elif today is not None and day > today:
        errors.add(field, Reason.DATE_IN_FUTURE,
                   f"{day.isoformat()} is after today ({today.isoformat()}) in the user's zone")


EARLIEST_ADMIN_DATE = dt.date(2000, 1, 1)
LATEST_ADMIN_DATE = dt.date(9000, 1, 1)
"""The dates an operator request may name: far around any check-in, and far enough from
date.min and date.max that widening a range by whole runs can never overflow."""


def check_admin_range(from_date: dt.date | None, to_date: dt.date | None,
                      errors: ValidationCollector) -> None:
    """An operator's optional date range: each end within EARLIEST_ADMIN_DATE ..
    LATEST_ADMIN_DATE (a range may start before launch: it just holds no check-ins), and
    to_date not before from_date."""
    for field, day in (("from_date", from_date), ("to_date", to_date)):
        if day is not None and not EARLIEST_ADMIN_DATE <= day <= LATEST_ADMIN_DATE:
            errors.add(field, Reason.INVALID_RANGE,
                       f"{day.isoformat()} is outside {EARLIEST_ADMIN_DATE.isoformat()}.."
                       f"{LATEST_ADMIN_DATE.isoformat()}")
    if from_date and to_date and from_date > to_date:
        errors.add("to_date", Reason.INVALID_RANGE, "to_date is before from_date")


def is_current(end_date: dt.date, today: dt.date) -> bool:
    """A run is current when it ends today or yesterday in the user's zone.

    An end after today counts too: it happens only after travel west (the day
    was marked where the date had already begun), and must not reset a streak.
    """
    return end_date >= today - dt.timedelta(days=1)


def current_streak(run: Run | None, zone: str | None, now: dt.datetime) -> tuple[bool, int]:
    """(current, current_streak_days) of a user's active run: its day_count while it
    is current in the user's zone (is_current), else 0. No run or no zone: (False, 0).
    The one home of the rule behind v2's GetActiveRun and every v1 read."""
    if run is None or zone is None:
        return False, 0
    current = is_current(run.end_date, today_in(now, zone))
    return current, run.day_count if current else 0


def page_size(requested: int, errors: ValidationCollector, *, default: int = DEFAULT_PAGE_SIZE,
              maximum: int = MAX_PAGE_SIZE, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, above the maximum is capped, negative is invalid.
    (v1's ListRuns `limit` follows the same rule with its own default and maximum.)"""
    if requested < 0:
        errors.add(field, Reason.INVALID_PAGE_SIZE, f"{field} must not be negative")
        return default
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_page_token(user_id: uuid.UUID, before_end_date: dt.date) -> str:
    payload = json.dumps({"v": 1, "u": str(user_id), "e": before_end_date.isoformat()},
                         separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, user_id: uuid.UUID, errors: ValidationCollector) -> dt.date | None:
    """Returns the keyset cursor, or records INVALID_PAGE_TOKEN."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        errors.add("page_token", Reason.INVALID_PAGE_TOKEN,
                   "page_token is not a token returned for this user_id")
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != 1 or data.get("u") != str(user_id):
            raise ValueError("token does not belong to this request")
        return dt.date.fromisoformat(str(data["e"]))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        errors.add("page_token", Reason.INVALID_PAGE_TOKEN,
                   "page_token is not a token returned for this user_id")
        return None


def parse_month(value: str, errors: ValidationCollector, field: str) -> int | None:
    """Parses an optional "YYYY-MM" strictly (ASCII digits, month 01..12, year 0001 on)
    into the yyyymm key (2028-02 -> 202802); "" is None (no bound)."""
    if not value:
        return None
    if not _MONTH_RE.fullmatch(value) or not 1 <= int(value[5:]) <= 12 or value[:4] == "0000":
        errors.add(field, Reason.INVALID_DATE, f"{echo(value)} is not a month of the form YYYY-MM")
        return None
    return int(value[:4]) * 100 + int(value[5:])


def encode_month_token(user_id: uuid.UUID, start: int | None, end: int | None,
                       last: int) -> str:
    """A ListMonthlyTotals page token: the last month listed (the next page lists older
    ones), bound to the user and to the request's month bounds."""
    payload = json.dumps({"v": 1, "k": "months", "u": str(user_id), "s": start or 0,
                          "e": end or 0, "m": last}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_month_token(token: str, user_id: uuid.UUID, start: int | None, end: int | None,
                       errors: ValidationCollector) -> int | None:
    """The last month of the previous page, or None (first page); a token returned for
    another user or other bounds (or not returned at all) records INVALID_PAGE_TOKEN."""
    if not token:
        return None
    try:
        if len(token) > MAX_PAGE_TOKEN_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if (not isinstance(data, dict) or data.get("v") != 1 or data.get("k") != "months"
                or data.get("u") != str(user_id) or data.get("s") != (start or 0)
                or data.get("e") != (end or 0)):
            raise ValueError("token does not belong to this request")
        last = data["m"]
        if type(last) is not int or not 101 <= last <= 999912 or not 1 <= last % 100 <= 12:
            raise ValueError("not a month")
        return last
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        errors.add("page_token", Reason.INVALID_PAGE_TOKEN,
                   "page_token is not a token returned for this user_id and these months")
        return None


def encode_user_cursor(user_id: uuid.UUID) -> str:
    """An opaque page token for batches of users in user_id order (the last user seen)."""
    payload = json.dumps({"v": 1, "a": str(user_id)}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_user_cursor(token: str, errors: ValidationCollector) -> uuid.UUID | None:
    """The last user of the previous batch, or None (empty token: start at the first
    user); a token this service did not return records INVALID_PAGE_TOKEN."""
    if not token:
        return None
    try:
        if len(token) > MAX_PAGE_TOKEN_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("a"), str):
            raise ValueError("not a user cursor")
        if not _UUID_RE.fullmatch(data["a"]):
            raise ValueError("not a UUID")
        return uuid.UUID(data["a"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        errors.add("page_token", Reason.INVALID_PAGE_TOKEN,
                   "page_token is not a token returned by a previous call")
        return None
