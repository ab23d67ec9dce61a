"""The totals arithmetic (domain/totals.py): examples at the calendar's edges and properties
against a brute-force reference written here (per month: sort its check-ins, walk them)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from potato_runs.domain.totals import (
    NO_TOTALS,
    LifetimeTotals,
    MonthTotals,
    first_day,
    lifetime_totals,
    month_end,
    month_label,
    monthly_totals,
    months_between,
    months_of_runs,
    months_touched,
    yyyymm,
)

D = dt.date.fromisoformat
ONE = dt.timedelta(days=1)


def span(a: str, b: str) -> set[dt.date]:
    lo, hi = D(a), D(b)
    return {lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)}


def brute_months(dates: Iterable[dt.date]) -> dict[int, tuple[int, int]]:
    """(streak_days, total_days) per month: each month's dates alone, walked in order."""
    by_month: dict[int, list[dt.date]] = defaultdict(list)
    for d in set(dates):
        by_month[d.year * 100 + d.month].append(d)
    out = {}
    for m, days in by_month.items():
        days.sort()
        best = cur = 1
        for a, b in itertools.pairwise(days):
            cur = cur + 1 if (b - a).days == 1 else 1
            best = max(best, cur)
        out[m] = (best, len(days))
    return out


def brute_lifetime(dates: Iterable[dt.date]) -> tuple[int, int, int]:
    days = sorted(set(dates))
    if not days:
        return (0, 0, 0)
    lengths = [1]
    for a, b in itertools.pairwise(days):
        if (b - a).days == 1:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return (len(days), len(lengths), max(lengths))


def as_pairs(totals: dict[int, MonthTotals]) -> dict[int, tuple[int, int]]:
    for k, t in totals.items():
        assert k == t.yyyymm
    return {k: (t.streak_days, t.total_days) for k, t in totals.items()}


# --------------------------------------------------------------------------- examples
def test_a_run_jan_25_to_feb_3_gives_january_7_and_february_3() -> None:
    got = monthly_totals(span("2026-01-25", "2026-02-03"))
    assert got == {202601: MonthTotals(202601, 7, 7), 202602: MonthTotals(202602, 3, 3)}
    assert lifetime_totals(span("2026-01-25", "2026-02-03")) == LifetimeTotals(10, 1, 10)


def test_month_ends_cut_runs() -> None:
    # 30-day April, 31-day May, and every pair of neighbouring month ends.
    assert as_pairs(monthly_totals(span("2025-04-30", "2025-05-01"))) == {
        202504: (1, 1), 202505: (1, 1)}
    assert as_pairs(monthly_totals(span("2025-04-01", "2025-04-30"))) == {202504: (30, 30)}
    assert as_pairs(monthly_totals(span("2025-05-01", "2025-05-31"))) == {202505: (31, 31)}
    assert as_pairs(monthly_totals(span("2025-02-01", "2025-02-28"))) == {202502: (28, 28)}
    for m in range(1, 13):
        end = month_end(dt.date(2026, m, 1))
        got = as_pairs(monthly_totals({end - ONE, end, end + ONE}))
        nxt = yyyymm(end + ONE)
        assert got == {yyyymm(end): (2, 2), nxt: (1, 1)}, end


def test_2028_02_29() -> None:
    assert month_end(D("2028-02-10")) == D("2028-02-29")
    assert month_end(D("2027-02-10")) == D("2027-02-28")
    assert as_pairs(monthly_totals(span("2028-02-01", "2028-02-29"))) == {202802: (29, 29)}
    assert as_pairs(monthly_totals(span("2028-02-28", "2028-03-01"))) == {
        202802: (2, 2), 202803: (1, 1)}
    # The leap day alone, then unmarked from the middle of a run.
    assert as_pairs(monthly_totals({D("2028-02-29")})) == {202802: (1, 1)}
    assert as_pairs(monthly_totals(span("2028-02-20", "2028-03-05") - {D("2028-02-29")})) == {
        202802: (9, 9), 202803: (5, 5)}


def test_a_run_over_several_months_and_a_year_end() -> None:
    dates = span("2025-11-15", "2026-02-10")
    assert as_pairs(monthly_totals(dates)) == {
        202511: (16, 16), 202512: (31, 31), 202601: (31, 31), 202602: (10, 10)}
    assert lifetime_totals(dates) == LifetimeTotals(88, 1, 88)
    assert months_of_runs([(D("2025-11-15"), D("2026-02-10"))]) == {
        202511, 202512, 202601, 202602}


def test_a_merge_changes_streak_days_in_three_months() -> None:
    """A backfill of Jan 31..Mar 1 joins Jan 10..30, Feb 3..9 and Mar 2..20 into one run."""
    before = span("2026-01-10", "2026-01-30") | span("2026-02-03", "2026-02-09") | span(
        "2026-03-02", "2026-03-20")
    filled = span("2026-01-31", "2026-03-01")
    after = before | filled
    assert as_pairs(monthly_totals(before)) == {
        202601: (21, 21), 202602: (7, 7), 202603: (19, 19)}
    assert as_pairs(monthly_totals(after)) == {
        202601: (22, 22), 202602: (28, 28), 202603: (20, 20)}
    assert lifetime_totals(before) == LifetimeTotals(47, 3, 21)
    assert lifetime_totals(after) == LifetimeTotals(70, 1, 70)
    assert months_touched(filled - before) == {202601, 202602, 202603}


def test_a_merge_across_a_month_end_changes_only_the_month_of_the_day() -> None:
    """Marking Feb 1 joins Jan 25..31 and Feb 2..10: January keeps its 7."""
    before = span("2026-01-25", "2026-01-31") | span("2026-02-02", "2026-02-10")
    after = before | {D("2026-02-01")}
    assert as_pairs(monthly_totals(before)) == {202601: (7, 7), 202602: (9, 9)}
    assert as_pairs(monthly_totals(after)) == {202601: (7, 7), 202602: (10, 10)}
    assert months_touched([D("2026-02-01")]) == {202602}
    assert lifetime_totals(after) == LifetimeTotals(17, 1, 17)


def test_a_split_lowers_streak_days() -> None:
    before = span("2026-03-01", "2026-03-31")
    after = before - {D("2026-03-16")}
    assert as_pairs(monthly_totals(before)) == {202603: (31, 31)}
    assert as_pairs(monthly_totals(after)) == {202603: (15, 30)}
    assert lifetime_totals(after) == LifetimeTotals(30, 2, 15)
    # A split across a month end lowers the longest run, not the other month.
    long = span("2026-03-20", "2026-04-10")
    assert as_pairs(monthly_totals(long - {D("2026-04-02")})) == {
        202603: (12, 12), 202604: (8, 9)}


def test_no_check_ins_no_totals() -> None:
    assert monthly_totals([]) == {}
    assert lifetime_totals([]) == NO_TOTALS
    assert months_touched([]) == frozenset()


def test_month_helpers() -> None:
    assert yyyymm(D("2028-02-29")) == 202802
    assert first_day(202802) == D("2028-02-01")
    assert month_label(202512) == "2025-12"
    assert MonthTotals(202601, 1, 2).month == "2026-01"
    assert months_between(D("2025-12-31"), D("2026-01-01")) == [202512, 202601]
    assert months_between(D("2025-12-01"), D("2025-12-31")) == [202512]


# --------------------------------------------------------------------------- properties
dates_sets = st.sets(st.dates(dt.date(2025, 1, 1), dt.date(2029, 12, 31)), max_size=120)
# Dense clusters around month ends, so runs cross them often.
clustered = st.builds(
    lambda anchors, offsets: {a + dt.timedelta(days=o) for a in anchors for o in offsets},
    st.lists(st.sampled_from([month_end(dt.date(y, m, 1)) for y in (2025, 2027, 2028)
                              for m in range(1, 13)]), min_size=1, max_size=6),
    st.sets(st.integers(-40, 40), max_size=60))
any_dates = st.one_of(dates_sets, clustered)


@given(any_dates)
def test_monthly_totals_equal_the_brute_force(dates: set[dt.date]) -> None:
    got = monthly_totals(dates)
    assert as_pairs(got) == brute_months(dates)
    for t in got.values():
        assert 1 <= t.streak_days <= t.total_days <= 31


@given(any_dates)
def test_lifetime_totals_equal_the_brute_force(dates: set[dt.date]) -> None:
    life = lifetime_totals(dates)
    assert (life.total_days, life.run_count, life.longest_run_days) == brute_lifetime(dates)
    months = monthly_totals(dates)
    assert sum(t.total_days for t in months.values()) == life.total_days
    assert max((t.streak_days for t in months.values()), default=0) <= life.longest_run_days


@given(any_dates, st.sets(st.dates(dt.date(2025, 1, 1), dt.date(2029, 12, 31)), max_size=40),
       st.booleans())
def test_a_change_touches_exactly_the_months_of_the_days_it_changed(
        dates: set[dt.date], days: set[dt.date], add: bool) -> None:
    """Mark/backfill (add) or unmark (remove) `days`: the months whose totals differ are
    exactly months_touched(the days whose mark changed), and those lie within the months
    of the runs before and after that hold a changed day."""
    after = dates | days if add else dates - days
    changed = after ^ dates
    before_m, after_m = monthly_totals(dates), monthly_totals(after)
    differ = {m for m in set(before_m) | set(after_m) if before_m.get(m) != after_m.get(m)}
    assert differ == months_touched(changed)

    def holding(ds: set[dt.date]) -> list[tuple[dt.date, dt.date]]:
        out = []
        for d in sorted(ds):
            if d in changed and (not out or d > out[-1][1]):
                s = e = d
                while s - ONE in ds:
                    s -= ONE
                while e + ONE in ds:
                    e += ONE
                out.append((s, e))
        return out

    assert months_touched(changed) <= months_of_runs(holding(dates) + holding(after))
