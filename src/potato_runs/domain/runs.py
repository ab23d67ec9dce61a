"""Pure run computations: islands of dates, diffs and rebuild ranges."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from potato_runs.domain.model import Run

ONE_DAY = dt.timedelta(days=1)


def islands(dates: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Maximal ranges of consecutive dates, oldest first."""
    out: list[tuple[dt.date, dt.date]] = []
    for d in sorted(set(dates)):
        if out and out[-1][1] + ONE_DAY == d:
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def runs_from_dates(user_id: uuid.UUID, dates: Iterable[dt.date]) -> list[Run]:
    """The projection of a set of check-in dates: the latest island is active."""
    spans = islands(dates)
    return [
        Run(user_id=user_id, start_date=s, end_date=e, active=(i == len(spans) - 1))
        for i, (s, e) in enumerate(spans)
    ]


@dataclass(frozen=True)
class RunRevision:
    before: Run
    after: Run


@dataclass
class RunDiff:
    added: list[Run] = field(default_factory=list)
    removed: list[Run] = field(default_factory=list)
    changed: list[RunRevision] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_runs(stored: Sequence[Run], rebuilt: Sequence[Run]) -> RunDiff:
    """Pairs runs by start date: same start means changed (if anything differs).

    Each stored run is paired at most once; stored runs left unpaired (including
    duplicates of a start date, possible only in damaged data) are removed.
    """
    diff = RunDiff()
    by_start: dict[dt.date, list[Run]] = {}
    for r in sorted(stored, key=lambda r: (r.start_date, r.end_date)):
        by_start.setdefault(r.start_date, []).append(r)
    for new in sorted(rebuilt, key=lambda r: r.start_date):
        candidates = by_start.get(new.start_date)
        if not candidates:
            diff.added.append(new)
            continue
        old = candidates.pop(0)
        if old.key() != new.key():
            diff.changed.append(RunRevision(before=old, after=new))
    diff.removed = sorted((r for rest in by_start.values() for r in rest),
                          key=lambda r: (r.start_date, r.end_date))
    return diff


def widen_range(
    lo: dt.date, hi: dt.date, stored: Sequence[Run], dates: Iterable[dt.date]
) -> tuple[dt.date, dt.date]:
    """Widens [lo, hi] until no stored run and no check-in island crosses an edge.

    Touching counts as crossing: a run ending on lo - 1 is pulled in, because a
    rebuild may merge it with what lies inside.
    """
    spans = [(r.start_date, r.end_date) for r in stored] + islands(dates)
    changed = True
    while changed:
        changed = False
        for s, e in spans:
            if s <= hi + ONE_DAY and e >= lo - ONE_DAY and (s < lo or e > hi):
                lo, hi = min(lo, s), max(hi, e)
                changed = True
    return lo, hi


@dataclass(frozen=True)
class RebuildPlan:
    diff: RunDiff
    window: tuple[dt.date, dt.date] | None
    """The range rebuilt after widening; None when there is nothing in range."""


def plan_rebuild(
    user_id: uuid.UUID,
    stored: Sequence[Run],
    dates: Iterable[dt.date],
    from_date: dt.date | None = None,
    to_date: dt.date | None = None,
) -> RebuildPlan:
    """What a rebuild of [from_date, to_date] must change; deterministic in the facts.

    Runs outside the widened window are kept as they are, except that the active
    flag is always recomputed for the whole user: the latest run is active.
    """
    all_dates = sorted(set(dates))
    target = runs_from_dates(user_id, all_dates)
    spans = [(r.start_date, r.end_date) for r in stored] + [(r.start_date, r.end_date)
                                                             for r in target]
    if not spans:
        return RebuildPlan(RunDiff(), None)
    # An open end stops at the data, but never before the given end: a range
    # wholly after (or before) every run is empty, yet still fixes `active`.
    lo = from_date or min(min(s for s, _ in spans), to_date or dt.date.max)
    hi = to_date or max(max(e for _, e in spans), lo)
    if lo > hi:
        return RebuildPlan(RunDiff(), None)
    lo, hi = widen_range(lo, hi, stored, all_dates)

    def inside(r: Run) -> bool:
        return r.start_date >= lo and r.end_date <= hi

    kept = [r for r in stored if not inside(r)]
    fresh = [r for r in target if inside(r)]
    final_ends = [r.end_date for r in kept] + [r.end_date for r in fresh]
    latest = max(final_ends) if final_ends else None

    def with_active(r: Run) -> Run:
        return Run(user_id=r.user_id, start_date=r.start_date, end_date=r.end_date,
                   active=(r.end_date == latest), created_at=r.created_at,
                   updated_at=r.updated_at, last_extended_at=r.last_extended_at,
                   run_id=r.run_id)

    diff = diff_runs([r for r in stored if inside(r)], [with_active(r) for r in fresh])
    for r in kept:
        fixed = with_active(r)
        if fixed.active != r.active:
            diff.changed.append(RunRevision(before=r, after=fixed))
    touched = [s for s, _ in spans if lo <= s <= hi]
    return RebuildPlan(diff, (lo, hi) if touched or fresh else None)
