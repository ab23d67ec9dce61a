"""The v1 read answers, whichever path produced them (pure).

Both read paths (storage/read_paths.py: legacy, computed from the check-ins, and the
projection, the stored runs) return the same read shapes; the answers are built from
them here, with the one current-streak rule (rules.current_streak), and normalized to
one JSON shape, so a shadow comparison compares like with like.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from potato_runs.domain import rules
from potato_runs.domain.model import Run


class ReadSource(StrEnum):
    """The path that produced an answer (the `potato-read-source` metadata)."""

    LEGACY = "legacy"            # gaps and islands over daily_checkins, on read
    PROJECTION = "projection"    # the stored runs


class ReadMethod(StrEnum):
    """The v1 reads (the `method` of shadow comparisons)."""

    GET_CURRENT_RUN = "GetCurrentRun"
    LIST_RUNS = "ListRuns"
    GET_STATS = "GetStats"


@dataclass(frozen=True)
class CurrentRead:
    """The user's zone and latest (active) run, as one path sees them."""

    time_zone: str | None
    run: Run | None


@dataclass(frozen=True)
class StatsRead:
    time_zone: str | None
    total_days: int
    longest_run_days: int
    run_count: int
    latest: Run | None
    """The latest (active) run, for the current streak."""


@dataclass(frozen=True)
class RunView:
    """A run as v1 shows it (no identity, no timestamps)."""

    start_date: dt.date
    end_date: dt.date
    day_count: int
    active: bool

    @classmethod
    def of(cls, run: Run) -> RunView:
        return cls(run.start_date, run.end_date, run.day_count, run.active)


@dataclass(frozen=True)
class CurrentRunAnswer:
    run: RunView | None
    current_streak_days: int


@dataclass(frozen=True)
class RunsAnswer:
    runs: tuple[RunView, ...]


@dataclass(frozen=True)
class StatsAnswer:
    total_days: int
    longest_run_days: int
    current_streak_days: int
    run_count: int


Answer = CurrentRunAnswer | RunsAnswer | StatsAnswer


def current_run_answer(read: CurrentRead, now: dt.datetime) -> CurrentRunAnswer:
    _, streak = rules.current_streak(read.run, read.time_zone, now)
    return CurrentRunAnswer(run=RunView.of(read.run) if read.run else None,
                            current_streak_days=streak)


def runs_answer(runs: list[Run]) -> RunsAnswer:
    return RunsAnswer(runs=tuple(RunView.of(r) for r in runs))


def stats_answer(read: StatsRead, now: dt.datetime) -> StatsAnswer:
    _, streak = rules.current_streak(read.latest, read.time_zone, now)
    return StatsAnswer(total_days=read.total_days, longest_run_days=read.longest_run_days,
                       current_streak_days=streak, run_count=read.run_count)


def _view_json(v: RunView) -> dict[str, Any]:
    return {"start_date": v.start_date.isoformat(), "end_date": v.end_date.isoformat(),
            "day_count": v.day_count, "active": v.active}


def normalize(answer: Answer) -> dict[str, Any]:
    """One JSON shape per answer type, the same whichever path produced it."""
    if isinstance(answer, CurrentRunAnswer):
        return {"run": _view_json(answer.run) if answer.run else None,
                "current_streak_days": answer.current_streak_days}
    if isinstance(answer, RunsAnswer):
        return {"runs": [_view_json(v) for v in answer.runs]}
    return {"total_days": answer.total_days, "longest_run_days": answer.longest_run_days,
            "current_streak_days": answer.current_streak_days, "run_count": answer.run_count}
