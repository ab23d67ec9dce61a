"""The test-only model of the projection: an obvious computation of runs from dates,
and of the totals (monthly and lifetime) from the same dates.

It is written independently of potato_runs.domain.runs and potato_runs.domain.totals on
purpose, so the suites that compare the service against it do not compare the code with
itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

Span = tuple[dt.date, dt.date, int, bool]


def expected_runs(dates: Iterable[dt.date]) -> list[Span]:
    """Walks the distinct dates in order; a gap of more than one day ends a run.
    Every run is (start, end, number of days, active), and only the last is active."""
    found: list[list[dt.date]] = []
    for day in sorted(set(dates)):
        if found and (day - found[-1][1]).days == 1:
            found[-1][1] = day
        else:
            found.append([day, day])
    return [(s, e, (e - s).days + 1, i == len(found) - 1) for i, (s, e) in enumerate(found)]


def as_strings(span: Span) -> tuple[str, str, int, bool]:
    """A span as the wire and the SQL helpers show it: ISO dates."""
    return (span[0].isoformat(), span[1].isoformat(), span[2], span[3])


def expected_strings(dates: Iterable[dt.date]) -> list[tuple[str, str, int, bool]]:
    return [as_strings(s) for s in expected_runs(dates)]


# --------------------------------------------------------------------------- totals
# Also independent of potato_runs.domain.totals: a calendar walk per month.
MonthRow = tuple[int, int, int]          # (yyyymm, streak_days, total_days)
Lifetime = tuple[int, int, int]          # (total_days, run_count, longest_run_days)


def expected_month_totals(dates: Iterable[dt.date]) -> list[MonthRow]:
    """For every month with a check-in, walk its calendar days from the 1st to the last
    one: the longest unbroken walk of marked days, and the number of marked days."""
    marked = set(dates)
    out: list[MonthRow] = []
    for year, month in sorted({(d.year, d.month) for d in marked}):
        best = streak = total = 0
        day = dt.date(year, month, 1)
        while day.month == month:
            if day in marked:
                streak += 1
                total += 1
                best = max(best, streak)
            else:
                streak = 0
            day += dt.timedelta(days=1)
        out.append((year * 100 + month, best, total))
    return out


def expected_lifetime(dates: Iterable[dt.date]) -> Lifetime:
    runs = expected_runs(dates)
    return (sum(r[2] for r in runs), len(runs), max((r[2] for r in runs), default=0))
