"""The TotalsService answers, whichever path produced them (pure).

Both paths (storage/totals_reads.py: `computed` on read from the check-ins, and
`stored`, the run_totals and user_totals rows) return the same read shapes; the answers
are built from them here, with the one current-streak rule (rules.current_streak), and
normalized to one JSON shape for the shadow comparison of ff.potato.totals_v2.

`update_time` is left out of the comparison: the paths define it differently (stored:
when the row's figures last changed; computed: when the latest check-in counted was
marked, which an unmark cannot move), so only the figures are compared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from potato_runs.domain import rules
from potato_runs.domain.model import Run
from potato_runs.domain.totals import month_label


class TotalsSource(StrEnum):
    """The path that produced an answer (the `potato-read-source` metadata)."""

    COMPUTED = "computed"   # gaps and islands over daily_checkins, on read
    STORED = "stored"       # run_totals / user_totals (+ the active run)


class TotalsMethod(StrEnum):
    """The TotalsService reads (the `method` of shadow comparisons)."""

    GET_TOTALS = "GetTotals"
    LIST_MONTHLY_TOTALS = "ListMonthlyTotals"


@dataclass(frozen=True)
class LifetimeRead:
    """The user's zone, lifetime figures and latest (active) run, as one path sees them."""

    time_zone: str | None
    total_days: int
    run_count: int
    longest_run_days: int
    latest: Run | None
    updated_at: dt.datetime | None


@dataclass(frozen=True)
class MonthRow:
    yyyymm: int
    total_days: int
    streak_days: int
    updated_at: dt.datetime | None

    @property
    def month(self) -> str:
        return month_label(self.yyyymm)


@dataclass(frozen=True)
class MonthRange:
    """Which months a page may list: `low`..`high` (yyyymm, inclusive; None: unbounded),
    already narrowed by the page cursor."""

    low: int | None
    high: int | None

    @property
    def empty(self) -> bool:
        return self.low is not None and self.high is not None and self.low > self.high


def month_before(key: int) -> int:
    """202501 -> 202412."""
    return key - 1 if key % 100 > 1 else key - 100 + 11


def page_range(start: int | None, end: int | None, after: int | None) -> MonthRange:
    """The request's bounds, narrowed to the months older than the cursor `after`."""
    high = end
    if after is not None:
        before = month_before(after)
        high = before if high is None else min(high, before)
    return MonthRange(start, high)


@dataclass(frozen=True)
class TotalsAnswer:
    total_days: int
    run_count: int
    longest_run_days: int
    current_streak_days: int
    update_time: dt.datetime | None


@dataclass(frozen=True)
class MonthlyPage:
    months: tuple[MonthRow, ...]
    next_page_token: str


TotalsAnswers = TotalsAnswer | MonthlyPage


def totals_answer(read: LifetimeRead, now: dt.datetime) -> TotalsAnswer:
    _, streak = rules.current_streak(read.latest, read.time_zone, now)
    return TotalsAnswer(total_days=read.total_days, run_count=read.run_count,
                        longest_run_days=read.longest_run_days, current_streak_days=streak,
                        update_time=read.updated_at if read.total_days > 0 else None)


def monthly_page(rows: list[MonthRow], page_size: int,
                 token: Callable[[int], str]) -> MonthlyPage:
    """`rows`: up to page_size + 1 months, newest first. A token only when more follow;
    `token(last_month)` makes it."""
    page = tuple(rows[:page_size])
    more = len(rows) > page_size and len(page) > 0
    return MonthlyPage(months=page, next_page_token=token(page[-1].yyyymm) if more else "")


def normalize(answer: TotalsAnswers) -> dict[str, Any]:
    """One JSON shape per answer type, the same whichever path produced it (no
    update_time: see the module docstring)."""
    if isinstance(answer, TotalsAnswer):
        return {"total_days": answer.total_days, "run_count": answer.run_count,
                "longest_run_days": answer.longest_run_days,
                "current_streak_days": answer.current_streak_days}
    return {"months": [{"month": m.month, "total_days": m.total_days,
                        "streak_days": m.streak_days} for m in answer.months],
            "next_page_token": answer.next_page_token}
