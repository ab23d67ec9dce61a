"""Unit tests of the pure run computations (potato_runs.domain.runs): no I/O."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from potato_runs.domain.model import Run
from potato_runs.domain.runs import (
    RunDiff,
    diff_runs,
    islands,
    plan_rebuild,
    runs_from_dates,
    widen_range,
)

U = uuid.UUID("3f2b8c1a-0d4e-4f6a-9b7c-1e2d3c4b5a69")
ONE = dt.timedelta(days=1)


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def days(first: str, last: str) -> list[dt.date]:
    a, b = d(first), d(last)
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def run(start: str, end: str, active: bool = False, run_id: int | None = None) -> Run:
    return Run(user_id=U, start_date=d(start), end_date=d(end), active=active, run_id=run_id)


def keys(runs: Iterable[Run]) -> list[tuple[dt.date, dt.date, int, bool]]:
    return sorted(r.key() for r in runs)


def spans(runs: Iterable[Run]) -> list[tuple[str, str, int, bool]]:
    return [(r.start_date.isoformat(), r.end_date.isoformat(), r.day_count, r.active)
            for r in sorted(runs, key=lambda r: r.start_date)]


def apply_diff(stored: Sequence[Run], diff: RunDiff) -> list[Run]:
    """What a repository does with a diff: delete, update in place, insert."""
    out = [r for r in stored if r not in diff.removed]
    for rev in diff.changed:
        out = [rev.after if r == rev.before else r for r in out]
    return out + list(diff.added)


# --- strategies ------------------------------------------------------------------

LO_DATE, HI_DATE = dt.date(2025, 1, 1), dt.date(2028, 3, 1)
SPECIAL = sorted({dt.date(y, m, 1) for y in range(2025, 2029) for m in range(1, 13)}
                 | {dt.date(y, m, 1) - ONE for y in range(2025, 2029) for m in range(1, 13)}
                 | {d("2028-02-28"), d("2028-02-29"), d("2028-03-01")})
SPECIAL = [x for x in SPECIAL if LO_DATE <= x <= HI_DATE]

a_date = st.one_of(st.sampled_from(SPECIAL), st.dates(min_value=LO_DATE, max_value=HI_DATE))


@st.composite
def clustered_dates(draw: st.DrawFn, max_islands: int = 12) -> list[dt.date]:
    """Islands of consecutive dates with gaps, in arbitrary order, with repeats."""
    start = draw(a_date)
    out: list[dt.date] = []
    cur = start
    for _ in range(draw(st.integers(0, max_islands))):
        cur += dt.timedelta(days=draw(st.integers(1, 6)))          # gap (1 = touching)
        length = draw(st.integers(1, 8))
        out += [cur + dt.timedelta(days=i) for i in range(length)]
        cur += dt.timedelta(days=length)
    out += draw(st.lists(st.sampled_from(out), max_size=5)) if out else []   # repeats
    return draw(st.permutations(out))


date_sets = st.one_of(clustered_dates(), st.lists(a_date, max_size=30))


@st.composite
def stored_runs(draw: st.DrawFn) -> list[Run]:
    """Runs Postgres would accept (no overlap, no touch, at most one active) but
    that may disagree with the facts."""
    spans_ = islands(draw(clustered_dates(max_islands=8)))
    active_at = draw(st.one_of(st.none(), st.integers(0, max(len(spans_) - 1, 0))))
    return [Run(user_id=U, start_date=s, end_date=e, active=(i == active_at), run_id=i + 1)
            for i, (s, e) in enumerate(spans_)]


def satisfies_constraints(runs: Sequence[Run]) -> bool:
    ordered = sorted(runs, key=lambda r: r.start_date)
    if sum(r.active for r in runs) > 1:
        return False
    return all(a.end_date + ONE < b.start_date for a, b in itertools.pairwise(ordered))


# --- islands / runs_from_dates ----------------------------------------------------


def test_islands_of_nothing() -> None:
    assert islands([]) == []
    assert runs_from_dates(U, []) == []


@pytest.mark.parametrize("dates, expected", [
    (["2025-06-15"], [("2025-06-15", "2025-06-15")]),                               # case 1
    (["2025-06-15", "2025-06-16", "2025-06-17"], [("2025-06-15", "2025-06-17")]),   # case 2
    (["2025-06-15", "2025-06-17"], [("2025-06-15", "2025-06-15"), ("2025-06-17", "2025-06-17")]),
    (["2025-06-17", "2025-06-15", "2025-06-16"], [("2025-06-15", "2025-06-17")]),   # case 3
    (["2025-06-30", "2025-07-01"], [("2025-06-30", "2025-07-01")]),                 # month end
    (["2025-01-31", "2025-02-01"], [("2025-01-31", "2025-02-01")]),
    (["2025-12-31", "2026-01-01"], [("2025-12-31", "2026-01-01")]),                 # year end
    (["2027-02-28", "2027-03-01"], [("2027-02-28", "2027-03-01")]),                 # no leap day
    (["2028-02-28", "2028-02-29", "2028-03-01"], [("2028-02-28", "2028-03-01")]),   # leap day
    (["2028-02-28", "2028-03-01"], [("2028-02-28", "2028-02-28"), ("2028-03-01", "2028-03-01")]),
    (["2025-06-15", "2025-06-15", "2025-06-15"], [("2025-06-15", "2025-06-15")]),   # repeats
])
def test_islands(dates: list[str], expected: list[tuple[str, str]]) -> None:
    assert islands(d(x) for x in dates) == [(d(a), d(b)) for a, b in expected]


def test_research_doc_merges() -> None:
    # Multi-gap merge: June 10-12 and June 20-22, filled to 13 days.
    base = days("2025-06-10", "2025-06-12") + days("2025-06-20", "2025-06-22")
    assert spans(runs_from_dates(U, base)) == [
        ("2025-06-10", "2025-06-12", 3, False), ("2025-06-20", "2025-06-22", 3, True)]
    assert spans(runs_from_dates(U, base + days("2025-06-13", "2025-06-19"))) == [
        ("2025-06-10", "2025-06-22", 13, True)]
    # Scenario 1: 15, 16, then 18 (new active run), then 17 fills the gap.
    assert spans(runs_from_dates(U, [d("2025-06-15"), d("2025-06-16"), d("2025-06-18")])) == [
        ("2025-06-15", "2025-06-16", 2, False), ("2025-06-18", "2025-06-18", 1, True)]
    assert spans(runs_from_dates(U, days("2025-06-15", "2025-06-18"))) == [
        ("2025-06-15", "2025-06-18", 4, True)]
    # Scenario 3: Aug 1, 3, 5, 7 then the gaps: one 7-day run.
    odd = [d("2025-08-01"), d("2025-08-03"), d("2025-08-05"), d("2025-08-07")]
    assert len(runs_from_dates(U, odd)) == 4
    assert spans(runs_from_dates(U, [*odd, d("2025-08-02"), d("2025-08-04"), d("2025-08-06")])) \
        == [("2025-08-01", "2025-08-07", 7, True)]


def test_only_the_latest_run_is_active() -> None:
    runs = runs_from_dates(U, [d("2025-03-01"), d("2025-01-01"), d("2025-02-01")])
    assert [r.active for r in runs] == [False, False, True]
    assert all(r.user_id == U for r in runs)


@given(date_sets, st.randoms(use_true_random=False))
def test_runs_from_dates_is_independent_of_order_and_repeats(dates: list[dt.date], rnd) -> None:
    shuffled = list(dates) + list(dates[: len(dates) // 2])
    rnd.shuffle(shuffled)
    assert runs_from_dates(U, shuffled) == runs_from_dates(U, dates)
    assert runs_from_dates(U, iter(sorted(dates, reverse=True))) == runs_from_dates(U, dates)


@given(date_sets)
def test_runs_are_exactly_the_dates(dates: list[dt.date]) -> None:
    runs = runs_from_dates(U, dates)
    covered = [r.start_date + dt.timedelta(days=i) for r in runs for i in range(r.day_count)]
    assert sum(r.day_count for r in runs) == len(set(dates)) == len(covered)
    assert set(covered) == set(dates)
    for r in runs:
        assert r.end_date >= r.start_date
        assert r.day_count == (r.end_date - r.start_date).days + 1


@given(date_sets)
def test_islands_never_touch_or_overlap(dates: list[dt.date]) -> None:
    spans_ = islands(dates)
    assert spans_ == sorted(spans_)
    for (_, e1), (s2, _) in itertools.pairwise(spans_):
        assert s2 - e1 >= dt.timedelta(days=2)    # at least one unmarked day between


@given(date_sets)
def test_exactly_one_active_run_and_it_is_the_latest(dates: list[dt.date]) -> None:
    runs = runs_from_dates(U, dates)
    active = [r for r in runs if r.active]
    if not dates:
        assert runs == [] and active == []
    else:
        assert len(active) == 1
        assert active[0].end_date == max(dates) == max(r.end_date for r in runs)


@given(date_sets, a_date)
def test_adding_a_date_never_increases_the_run_count_by_more_than_one(
        dates: list[dt.date], new: dt.date) -> None:
    before = len(runs_from_dates(U, dates))
    after = len(runs_from_dates(U, [*dates, new]))
    assert before - 1 <= after <= before + 1
    if new in dates:
        assert after == before


# --- diff_runs ---------------------------------------------------------------------


def test_diff_of_equal_projections_is_empty() -> None:
    stored = [run("2025-01-01", "2025-01-03", run_id=1), run("2025-02-01", "2025-02-01", True, 2)]
    diff = diff_runs(stored, runs_from_dates(U, [*days("2025-01-01", "2025-01-03"), d("2025-02-01")]))
    assert diff.empty
    assert diff_runs([], []).empty


def test_diff_added_removed_changed() -> None:
    stored = [
        run("2025-01-01", "2025-01-03", run_id=1),            # unchanged
        run("2025-02-01", "2025-02-02", run_id=2),            # grows: changed
        run("2025-03-01", "2025-03-01", run_id=3),            # gone: removed
        run("2025-04-01", "2025-04-05", True, run_id=4),      # loses active: changed
    ]
    rebuilt = runs_from_dates(U, days("2025-01-01", "2025-01-03") + days("2025-02-01", "2025-02-05")
                              + days("2025-04-01", "2025-04-05") + [d("2025-05-01")])
    diff = diff_runs(stored, rebuilt)
    assert not diff.empty
    assert spans(diff.added) == [("2025-05-01", "2025-05-01", 1, True)]
    assert [r.run_id for r in diff.removed] == [3]
    assert [(c.before.run_id, c.after.key()) for c in diff.changed] == [
        (2, (d("2025-02-01"), d("2025-02-05"), 5, False)),
        (4, (d("2025-04-01"), d("2025-04-05"), 5, False)),
    ]


def test_diff_pairs_by_start_date() -> None:
    # Same start, different end: one change, not a removal plus an addition.
    diff = diff_runs([run("2025-06-10", "2025-06-12", True, 1)],
                     [run("2025-06-10", "2025-06-22", True)])
    assert diff.added == [] and diff.removed == []
    assert len(diff.changed) == 1 and diff.changed[0].before.run_id == 1
    # Same end, different start: the old one is removed and the new one added.
    diff = diff_runs([run("2025-06-20", "2025-06-22", True, 1)],
                     [run("2025-06-10", "2025-06-22", True)])
    assert [r.run_id for r in diff.removed] == [1]
    assert spans(diff.added) == [("2025-06-10", "2025-06-22", 13, True)]


def test_diff_ignores_timestamps_and_ids() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    stored = [Run(U, d("2025-06-10"), d("2025-06-12"), True, now, now, now, run_id=9)]
    assert diff_runs(stored, [run("2025-06-10", "2025-06-12", True)]).empty


@given(stored_runs(), date_sets)
def test_applying_a_diff_gives_the_rebuilt_projection(stored: list[Run],
                                                      dates: list[dt.date]) -> None:
    target = runs_from_dates(U, dates)
    diff = diff_runs(stored, target)
    assert keys(apply_diff(stored, diff)) == keys(target)
    assert diff.empty is (keys(stored) == keys(target))
    assert diff_runs(target, target).empty


# --- widen_range ----------------------------------------------------------------------


def test_widen_range_inside_a_gap_is_unchanged() -> None:
    stored = [run("2025-06-01", "2025-06-03"), run("2025-06-20", "2025-06-22", True)]
    assert widen_range(d("2025-06-05"), d("2025-06-18"), stored, []) == (d("2025-06-05"),
                                                                            d("2025-06-18"))


@pytest.mark.parametrize("lo, hi, expected", [
    ("2025-06-02", "2025-06-10", ("2025-06-01", "2025-06-10")),   # lo cuts a run
    ("2025-06-05", "2025-06-21", ("2025-06-05", "2025-06-22")),   # hi cuts a run
    ("2025-06-02", "2025-06-21", ("2025-06-01", "2025-06-22")),   # both edges cut
    ("2025-06-02", "2025-06-02", ("2025-06-01", "2025-06-03")),   # range inside one run
    ("2025-06-04", "2025-06-10", ("2025-06-01", "2025-06-10")),   # a run ends on lo - 1
    ("2025-06-10", "2025-06-19", ("2025-06-10", "2025-06-22")),   # a run starts on hi + 1
    ("2025-06-04", "2025-06-19", ("2025-06-01", "2025-06-22")),   # touches on both sides
    ("2025-06-05", "2025-06-18", ("2025-06-05", "2025-06-18")),   # one free day each side
    ("2025-06-01", "2025-06-22", ("2025-06-01", "2025-06-22")),   # already whole runs
])
def test_widen_range_never_cuts_or_touches_a_run(lo: str, hi: str, expected: tuple[str, str]) -> None:
    stored = [run("2025-06-01", "2025-06-03"), run("2025-06-20", "2025-06-22", True)]
    assert widen_range(d(lo), d(hi), stored, []) == (d(expected[0]), d(expected[1]))


def test_widen_range_follows_islands_of_facts_and_chains() -> None:
    # The stored run 06-10..06-12 is pulled in; the facts say it continues to
    # 06-15 (not yet projected), and the next run starts on 06-16: a chain.
    stored = [run("2025-06-10", "2025-06-12"), run("2025-06-16", "2025-06-18", True)]
    facts = days("2025-06-10", "2025-06-18")
    assert widen_range(d("2025-06-11"), d("2025-06-11"), stored, facts) == (d("2025-06-10"),
                                                                            d("2025-06-18"))
    # Facts alone: an island crossing the edge.
    assert widen_range(d("2025-06-14"), d("2025-06-30"), [], days("2025-06-01", "2025-06-15")) \
        == (d("2025-06-01"), d("2025-06-30"))


@given(stored_runs(), date_sets, a_date, st.integers(0, 60))
def test_widen_range_properties(stored: list[Run], dates: list[dt.date], lo: dt.date,
                                width: int) -> None:
    hi = lo + dt.timedelta(days=width)
    wlo, whi = widen_range(lo, hi, stored, dates)
    assert wlo <= lo and whi >= hi
    all_spans = [(r.start_date, r.end_date) for r in stored] + islands(dates)
    for s, e in all_spans:
        inside = wlo <= s and e <= whi
        apart = e < wlo - ONE or s > whi + ONE
        assert inside or apart, (s, e, wlo, whi)
    assert widen_range(wlo, whi, stored, dates) == (wlo, whi)      # a fixed point
    # Widening adds only days that belong to spans that had to come in.
    if (wlo, whi) != (lo, hi):
        assert any(s == wlo for s, _ in all_spans) or wlo == lo
        assert any(e == whi for _, e in all_spans) or whi == hi


# --- plan_rebuild -----------------------------------------------------------------------


def test_rebuild_of_a_correct_projection_changes_nothing() -> None:
    facts = days("2025-06-10", "2025-06-12") + days("2025-06-20", "2025-06-22")
    stored = [run("2025-06-10", "2025-06-12", run_id=1), run("2025-06-20", "2025-06-22", True, 2)]
    for lo, hi in [(None, None), (d("2025-06-11"), None), (None, d("2025-06-11")),
                   (d("2025-06-11"), d("2025-06-21")), (d("2026-01-01"), d("2026-02-01"))]:
        assert plan_rebuild(U, stored, facts, lo, hi).diff.empty


def test_rebuild_of_nothing() -> None:
    plan = plan_rebuild(U, [], [])
    assert plan.diff.empty and plan.window is None


def test_full_rebuild_from_an_empty_projection() -> None:
    facts = [*days("2025-12-30", "2026-01-02"), d("2028-02-29")]
    plan = plan_rebuild(U, [], facts)
    assert spans(plan.diff.added) == [("2025-12-30", "2026-01-02", 4, False),
                                      ("2028-02-29", "2028-02-29", 1, True)]
    assert plan.window == (d("2025-12-30"), d("2028-02-29"))


def test_full_rebuild_removes_runs_without_facts() -> None:
    plan = plan_rebuild(U, [run("2025-06-10", "2025-06-12", True, 1)], [])
    assert [r.run_id for r in plan.diff.removed] == [1]
    assert plan.diff.added == [] and plan.diff.changed == []


def test_partial_rebuild_never_cuts_a_run() -> None:
    # Facts say 06-01..06-30 is one island; the projection lost 06-10..06-20.
    facts = days("2025-06-01", "2025-06-30")
    stored = [run("2025-06-01", "2025-06-09", run_id=1), run("2025-06-21", "2025-06-30", True, 2)]
    plan = plan_rebuild(U, stored, facts, d("2025-06-15"), d("2025-06-15"))
    assert plan.window == (d("2025-06-01"), d("2025-06-30"))
    assert spans(apply_diff(stored, plan.diff)) == [("2025-06-01", "2025-06-30", 30, True)]


def test_partial_rebuild_leaves_runs_outside_the_window_alone() -> None:
    # Both runs are wrong, but only the one in range is rebuilt.
    facts = days("2025-03-01", "2025-03-05") + days("2025-09-01", "2025-09-05")
    stored = [run("2025-03-01", "2025-03-02", run_id=1), run("2025-09-01", "2025-09-02", True, 2)]
    plan = plan_rebuild(U, stored, facts, d("2025-08-01"), d("2025-12-31"))
    assert plan.window == (d("2025-08-01"), d("2025-12-31"))
    assert spans(apply_diff(stored, plan.diff)) == [("2025-03-01", "2025-03-02", 2, False),
                                                    ("2025-09-01", "2025-09-05", 5, True)]


def test_partial_rebuild_recomputes_the_active_flag_for_the_whole_user() -> None:
    facts = days("2025-03-01", "2025-03-05") + days("2025-09-01", "2025-09-05")
    # The wrong run is active; the range covers neither run.
    stored = [run("2025-03-01", "2025-03-05", True, 1), run("2025-09-01", "2025-09-05", False, 2)]
    plan = plan_rebuild(U, stored, facts, d("2025-05-01"), d("2025-05-31"))
    assert spans(apply_diff(stored, plan.diff)) == [("2025-03-01", "2025-03-05", 5, False),
                                                    ("2025-09-01", "2025-09-05", 5, True)]
    # A new latest run in range takes the flag from a kept run.
    facts2 = [*facts, d("2025-12-01")]
    stored2 = [run("2025-03-01", "2025-03-05", False, 1), run("2025-09-01", "2025-09-05", True, 2)]
    plan = plan_rebuild(U, stored2, facts2, d("2025-11-01"), None)
    assert spans(apply_diff(stored2, plan.diff)) == [("2025-03-01", "2025-03-05", 5, False),
                                                     ("2025-09-01", "2025-09-05", 5, False),
                                                     ("2025-12-01", "2025-12-01", 1, True)]


@pytest.mark.parametrize("lo, hi", [
    (d("2026-01-01"), None),          # open range after every run
    (None, d("2025-01-15")),          # open range before every run
    (d("2026-01-01"), d("2026-02-01")),
    (d("2025-01-02"), d("2025-01-15")),
])
def test_active_flag_is_recomputed_whatever_the_range(lo: dt.date | None, hi: dt.date | None) -> None:
    facts = days("2025-03-01", "2025-03-05") + days("2025-09-01", "2025-09-05")
    stored = [run("2025-03-01", "2025-03-05", True, 1), run("2025-09-01", "2025-09-05", False, 2)]
    plan = plan_rebuild(U, stored, facts, lo, hi)
    assert spans(apply_diff(stored, plan.diff)) == [("2025-03-01", "2025-03-05", 5, False),
                                                    ("2025-09-01", "2025-09-05", 5, True)]


@given(stored_runs(), date_sets, st.randoms(use_true_random=False))
def test_full_rebuild_gives_the_projection_of_the_facts_whatever_the_order(
        stored: list[Run], dates: list[dt.date], rnd) -> None:
    plan = plan_rebuild(U, stored, dates)
    assert keys(apply_diff(stored, plan.diff)) == keys(runs_from_dates(U, dates))
    # Deterministic: the same facts and projection, in any order, give the same plan.
    shuffled_dates, shuffled_stored = list(dates), list(stored)
    rnd.shuffle(shuffled_dates)
    rnd.shuffle(shuffled_stored)
    again = plan_rebuild(U, shuffled_stored, shuffled_dates)
    assert again.window == plan.window
    assert keys(again.diff.added) == keys(plan.diff.added)
    assert keys(again.diff.removed) == keys(plan.diff.removed)
    assert sorted((c.before.key(), c.after.key()) for c in again.diff.changed) == \
        sorted((c.before.key(), c.after.key()) for c in plan.diff.changed)
    # And replaying it changes nothing more.
    assert plan_rebuild(U, apply_diff(stored, plan.diff), dates).diff.empty


@given(stored_runs(), date_sets, st.one_of(st.none(), a_date), st.one_of(st.none(), a_date))
def test_partial_rebuild_properties(stored: list[Run], dates: list[dt.date],
                                    lo: dt.date | None, hi: dt.date | None) -> None:
    assume(lo is None or hi is None or lo <= hi)
    plan = plan_rebuild(U, stored, dates, lo, hi)
    after = apply_diff(stored, plan.diff)
    target = runs_from_dates(U, dates)
    # The result is something Postgres accepts.
    assert satisfies_constraints(after)
    # The active flag is recomputed for the whole user: the latest run is active.
    if after:
        latest = max(r.end_date for r in after)
        assert [r.end_date for r in after if r.active] == [latest]
    if plan.window is not None:
        wlo, whi = plan.window
        assert lo is None or wlo <= lo
        assert hi is None or whi >= hi
        for s, e in [(r.start_date, r.end_date) for r in stored + target]:
            assert (wlo <= s and e <= whi) or e < wlo - ONE or s > whi + ONE   # never cut

        def inside(r: Run) -> bool:
            return wlo <= r.start_date and r.end_date <= whi

        # Inside the window: exactly the facts' runs.
        assert [(r.start_date, r.end_date) for r in sorted(after, key=lambda r: r.start_date)
                if inside(r)] == [(r.start_date, r.end_date) for r in target if inside(r)]
        # Outside: the stored ranges are kept.
        assert sorted((r.start_date, r.end_date) for r in after if not inside(r)) == \
            sorted((r.start_date, r.end_date) for r in stored if not inside(r))
    else:
        assert sorted((r.start_date, r.end_date) for r in after) == \
            sorted((r.start_date, r.end_date) for r in stored)
    # The same range once more changes nothing.
    assert plan_rebuild(U, after, dates, lo, hi).diff.empty


@given(date_sets, st.one_of(st.none(), a_date), st.one_of(st.none(), a_date))
def test_any_rebuild_of_a_correct_projection_changes_nothing(
        dates: list[dt.date], lo: dt.date | None, hi: dt.date | None) -> None:
    assume(lo is None or hi is None or lo <= hi)
    stored = [Run(U, r.start_date, r.end_date, r.active, run_id=i)
              for i, r in enumerate(runs_from_dates(U, dates))]
    assert plan_rebuild(U, stored, dates, lo, hi).diff.empty
