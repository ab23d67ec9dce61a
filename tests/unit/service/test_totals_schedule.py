"""POTATO_TOTALS_RECONCILE_AT and when the daily reconciliation is due (no database:
`due` is pure; claiming and running are in tests/integration/test_totals_reconcile.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.service.totals_reconcile import DailyTotalsReconcile


def test_the_setting_defaults_to_four_and_empty_disables() -> None:
    assert Settings.from_env({}).totals_reconcile_at == dt.time(4, 0)
    assert Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": ""}).totals_reconcile_at is None
    assert Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": " "}).totals_reconcile_at is None
    assert Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": "23:59"}).totals_reconcile_at == \
        dt.time(23, 59)
    assert Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": "00:00"}).totals_reconcile_at == \
        dt.time(0, 0)


@pytest.mark.parametrize("value", ["24:00", "4:00", "04:60", "0400", "04:00:00", "ab:cd",
                                   "04:0٣", "noon", "-1:00"])
def test_a_bad_time_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="POTATO_TOTALS_RECONCILE_AT") as err:
        Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": value})
    assert "HH:MM" in str(err.value)


def schedule(at: dt.time | None) -> DailyTotalsReconcile:
    unused: Any = None   # due() reads neither the reconciler nor the repository
    return DailyTotalsReconcile(unused, unused, FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                                at, "replica-1")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_due_from_the_time_for_the_catch_up_window() -> None:
    s = schedule(dt.time(4, 0))
    assert s.due(utc(2026, 3, 1, 3, 59)) is None
    assert s.due(utc(2026, 3, 1, 4, 0)) == dt.date(2026, 3, 1)
    assert s.due(utc(2026, 3, 1, 9, 59)) == dt.date(2026, 3, 1)
    assert s.due(utc(2026, 3, 1, 10, 0)) is None          # too late: skipped, not at peak
    # Another zone's clock is the same instant.
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert s.due(dt.datetime(2026, 3, 1, 5, 30, tzinfo=berlin)) == dt.date(2026, 3, 1)


def test_a_window_across_midnight_belongs_to_the_day_it_started() -> None:
    s = schedule(dt.time(22, 30))
    assert s.due(utc(2026, 12, 31, 22, 29)) is None
    assert s.due(utc(2026, 12, 31, 23, 0)) == dt.date(2026, 12, 31)
    assert s.due(utc(2027, 1, 1, 4, 29)) == dt.date(2026, 12, 31)
    assert s.due(utc(2027, 1, 1, 4, 30)) is None


def test_disabled_is_never_due_and_never_starts() -> None:
    s = schedule(None)
    assert s.due(utc(2026, 3, 1, 4, 0)) is None
    s.start()
    assert s._task is None
