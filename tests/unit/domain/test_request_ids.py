"""Request ids (AIP-155): the accepted spelling and the fingerprint's canonical form."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.request_ids import fingerprint, parse_request_id
from potato_runs.service.commands import BackfillDays, MarkDay, UnmarkDay
from potato_runs.service.request_ids import backfill_key, mark_key, unmark_key

U = uuid.UUID("6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99")
R = uuid.UUID("0b6a2c1e-95d4-4c1b-8f3e-2a7d9e4c5b10")
D1, D2 = dt.date(2025, 6, 1), dt.date(2025, 6, 2)


def test_no_request_id_is_none() -> None:
    errors = ValidationCollector()
    assert parse_request_id("", errors) is None and not errors.violations


@pytest.mark.parametrize("value", [str(R), str(R).upper()])
def test_canonical_uuids_are_accepted(value: str) -> None:
    errors = ValidationCollector()
    assert parse_request_id(value, errors) == R and not errors.violations


@pytest.mark.parametrize("value", [str(R) + "\n", " " + str(R), "{" + str(R) + "}",
                                   R.hex, "urn:uuid:" + str(R), "x" * 1000, "é" * 36])
def test_other_spellings_are_invalid_request_id(value: str) -> None:
    errors = ValidationCollector()
    assert parse_request_id(value, errors, "potato-request-id") is None
    [v] = errors.violations
    assert (v.field, v.reason) == ("potato-request-id", Reason.INVALID_REQUEST_ID)
    assert v.description.isascii() and len(v.description) < 300


def test_the_fingerprint_is_sha256_of_a_canonical_form() -> None:
    a = fingerprint("MarkDay", {"b": "1", "a": None})
    assert len(a) == 32
    assert a == fingerprint("MarkDay", {"a": None, "b": "1"})   # key order does not count
    assert a != fingerprint("UnmarkDay", {"a": None, "b": "1"})
    assert a != fingerprint("MarkDay", {"a": "", "b": "1"})     # unset is not empty


def test_keys_cover_every_field_that_changes_a_write() -> None:
    base = MarkDay(U, D1, None, "Europe/Paris", "app", request_id=R)
    key = mark_key(base)
    assert key is not None and key.request_id == R
    assert mark_key(MarkDay(U, D1, None, "Europe/Paris", "app", request_id=R)) == key
    for other in (MarkDay(U, D2, None, "Europe/Paris", "app", request_id=R),
                  MarkDay(U, D1, None, None, "app", request_id=R),
                  MarkDay(U, D1, None, "Europe/Paris", "", request_id=R),
                  MarkDay(uuid.uuid4(), D1, None, "Europe/Paris", "app", request_id=R)):
        assert mark_key(other) != key
    assert mark_key(MarkDay(U, D1, None, None)) is None
    unmark = unmark_key(UnmarkDay(U, D1, request_id=R))
    assert unmark is not None and unmark.fingerprint != key.fingerprint


def test_a_mark_time_is_compared_as_an_instant() -> None:
    t = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
    paris = t.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert (mark_key(MarkDay(U, None, t, None, request_id=R))
            == mark_key(MarkDay(U, None, paris, None, request_id=R)))
    assert (mark_key(MarkDay(U, None, t, None, request_id=R))
            != mark_key(MarkDay(U, None, t + dt.timedelta(microseconds=1), None, request_id=R)))


def test_a_backfills_dates_are_a_set() -> None:
    key = backfill_key(BackfillDays(U, (D1, D2), None, request_id=R))
    assert key == backfill_key(BackfillDays(U, (D2, D1, D2), None, request_id=R))
    assert key != backfill_key(BackfillDays(U, (D1,), None, request_id=R))
    # Where a date sits in the request (for error messages) is not part of the request.
    assert key == backfill_key(BackfillDays(U, (D1, D2), None, date_fields=("x", "y"),
                                            request_id=R))
