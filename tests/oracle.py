"""The test-only model of the projection: an obvious computation of runs from dates.

It is written independently of potato_runs.domain.runs on purpose, so the suites
that compare the service against it do not compare the code with itself.
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
