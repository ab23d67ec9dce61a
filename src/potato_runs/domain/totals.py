"""The totals arithmetic (pure): monthly and lifetime totals, and the months a change touches.

Definitions (the same in SQL, migration 0004: `potato_computed_month_totals`,
`potato_computed_user_totals`, `potato_refresh_totals`; a property test holds the two equal):

- a month's `total_days` is the number of check-ins dated in that month;
- a month's `streak_days` is the length of the user's longest run counting only its days
  inside that month, which is the longest stretch of consecutive check-ins within the
  month (a run Jan 25..Feb 3 gives January 7 and February 3);
- a month without check-ins has no totals;
- lifetime `total_days` is all check-ins, `run_count` the number of runs (maximal stretches
  of consecutive check-ins) and `longest_run_days` the longest of them. The current streak
  is `rules.current_streak`'s (it depends on today, so it is never stored).

Which months a change touches: a month's totals are a function of the check-ins dated in
that month and of nothing else. So a write can change the totals of exactly the months
of the days whose mark it changed (`months_touched`), and no other month, even when it
merges or splits runs that cover other months: the days of those runs that lie in other
months are the same check-ins before and after, so their stretches there are the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from potato_runs.domain.runs import islands


def yyyymm(day: dt.date) -> int:
    """The month of a date as the stored key: 2028-02-29 -> 202802."""
    return day.year * 100 + day.month


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def month_end(day: dt.date) -> dt.date:
    """The last day of the month of `day` (2028-02-29 for any day of February 2028)."""
    nxt = dt.date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return nxt - dt.timedelta(days=1)


def first_day(key: int) -> dt.date:
    """202802 -> 2028-02-01."""
    return dt.date(key // 100, key % 100, 1)


def month_label(key: int) -> str:
    """202802 -> "2028-02", the wire form of a month."""
    return f"{key // 100:04d}-{key % 100:02d}"


def months_between(start: dt.date, end: dt.date) -> list[int]:
    """Every month from the month of `start` to the month of `end`, oldest first."""
    out: list[int] = []
    cur = month_start(start)
    while cur <= end:
        out.append(yyyymm(cur))
        cur = month_end(cur) + dt.timedelta(days=1)
    return out


@dataclass(frozen=True, order=True)
class MonthTotals:
    yyyymm: int
    streak_days: int
    total_days: int

    @property
    def month(self) -> str:
        return month_label(self.yyyymm)


@dataclass(frozen=True)
class LifetimeTotals:
    total_days: int
    run_count: int
    longest_run_days: int


NO_TOTALS = LifetimeTotals(0, 0, 0)


def clip_to_month(start: dt.date, end: dt.date, month: int) -> int:
    """How many days of the run start..end lie inside `month` (0 when none)."""
    first = first_day(month)
    lo, hi = max(start, first), min(end, month_end(first))
    return max((hi - lo).days + 1, 0)


def monthly_totals(dates: Iterable[dt.date]) -> dict[int, MonthTotals]:
    """The totals of every month with a check-in, keyed by yyyymm. A run's days are split
    at month ends, so each piece is a stretch of consecutive check-ins within its month."""
    out: dict[int, MonthTotals] = {}
    for start, end in islands(dates):
        for month in months_between(start, end):
            n = clip_to_month(start, end, month)
            old = out.get(month)
            out[month] = (MonthTotals(month, n, n) if old is None else
                          MonthTotals(month, max(old.streak_days, n), old.total_days + n))
    return out


def lifetime_totals(dates: Iterable[dt.date]) -> LifetimeTotals:
    spans = islands(dates)
    if not spans:
        return NO_TOTALS
    lengths = [(e - s).days + 1 for s, e in spans]
    return LifetimeTotals(sum(lengths), len(lengths), max(lengths))


def months_touched(changed_days: Iterable[dt.date]) -> frozenset[int]:
    """The months whose totals a write can change: those of the days it marked or unmarked.

    Sufficient, because a month's totals depend only on the check-ins dated in it.
    Necessary, because adding or removing a day always changes its month's total_days.
    It is a subset of "the months of the runs before and after the change" (the run that
    holds, or held, a changed day covers that day's month), which the rebuild uses."""
    return frozenset(yyyymm(d) for d in changed_days)


def months_of_runs(spans: Iterable[tuple[dt.date, dt.date]]) -> frozenset[int]:
    """Every month that the runs (start, end) cover: a superset of `months_touched`."""
    return frozenset(m for s, e in spans for m in months_between(s, e))
