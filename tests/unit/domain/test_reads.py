"""The v1 answers and the one current-streak rule (pure)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from potato_runs.domain import rules
from potato_runs.domain.errors import ValidationCollector
from potato_runs.domain.model import Run
from potato_runs.domain.reads import (
    CurrentRead,
    StatsRead,
    current_run_answer,
    normalize,
    runs_answer,
    stats_answer,
)

U = uuid.UUID("6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99")
NY = "America/New_York"
# 03:00 UTC on the 10th is still the evening of the 9th in New York.
NOW = dt.datetime(2026, 3, 10, 3, 0, tzinfo=dt.UTC)


def run(start: str, end: str, active: bool = True) -> Run:
    return Run(U, dt.date.fromisoformat(start), dt.date.fromisoformat(end), active)


@pytest.mark.parametrize(("end", "zone", "expected"), [
    ("2026-03-09", NY, (True, 3)),         # today in New York
    ("2026-03-08", NY, (True, 3)),         # yesterday
    ("2026-03-07", NY, (False, 0)),        # the day before: over
    ("2026-03-10", NY, (True, 3)),         # after today (travel west): still current
    ("2026-03-08", "Asia/Tokyo", (False, 0)),   # already the 10th in Tokyo
    ("2026-03-09", None, (False, 0)),      # no zone
])
def test_current_streak(end: str, zone: str | None, expected: tuple[bool, int]) -> None:
    e = dt.date.fromisoformat(end)
    r = Run(U, e - dt.timedelta(days=2), e, True)
    assert rules.current_streak(r, zone, NOW) == expected


def test_no_run_has_no_streak() -> None:
    assert rules.current_streak(None, NY, NOW) == (False, 0)


def test_answers_share_the_rule_and_normalize_alike() -> None:
    latest = run("2026-03-07", "2026-03-09")
    cur = current_run_answer(CurrentRead(NY, latest), NOW)
    assert normalize(cur) == {"run": {"start_date": "2026-03-07", "end_date": "2026-03-09",
                                      "day_count": 3, "active": True},
                              "current_streak_days": 3}
    st = stats_answer(StatsRead(NY, 5, 3, 2, latest), NOW)
    assert normalize(st) == {"total_days": 5, "longest_run_days": 3, "current_streak_days": 3,
                             "run_count": 2}
    # Identity and timestamps of stored runs are not part of the answer.
    stored = Run(U, latest.start_date, latest.end_date, True, run_id=7,
                 created_at=NOW, updated_at=NOW)
    assert normalize(runs_answer([stored])) == normalize(runs_answer([latest]))
    assert normalize(current_run_answer(CurrentRead(None, None), NOW)) == {
        "run": None, "current_streak_days": 0}


@pytest.mark.parametrize(("requested", "expected", "bad"), [
    (0, 20, False), (1, 1, False), (100, 100, False), (101, 100, False),
    (2**31 - 1, 100, False), (-1, 20, True),
])
def test_v1_limit_follows_the_page_size_rule(requested: int, expected: int, bad: bool) -> None:
    errors = ValidationCollector()
    assert rules.page_size(requested, errors, default=20, maximum=100, field="limit") == expected
    assert [(v.field, v.reason.value) for v in errors.violations] == (
        [("limit", "INVALID_PAGE_SIZE")] if bad else [])
