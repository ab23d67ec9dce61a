"""Domain values: runs, changes and write results."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

LAUNCH_DATE = dt.date(2025, 1, 1)
"""Nothing can be marked before this date."""

MAX_BACKFILL_DATES = 500
"""Most dates one BackfillDays call may carry."""


class Change(StrEnum):
    NONE = "none"
    CREATED = "created"
    EXTENDED = "extended"
    MERGED = "merged"
    SHRUNK = "shrunk"
    SPLIT = "split"
    DELETED = "deleted"


@dataclass(frozen=True)
class Run:
    user_id: uuid.UUID
    start_date: dt.date
    end_date: dt.date
    active: bool
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    last_extended_at: dt.datetime | None = None
    run_id: int | None = None
    """Storage identity; not part of what a rebuild must reproduce."""

    @property
    def day_count(self) -> int:
        return (self.end_date - self.start_date).days + 1

    def key(self) -> tuple[dt.date, dt.date, int, bool]:
        """What a rebuild must reproduce exactly."""
        return (self.start_date, self.end_date, self.day_count, self.active)


@dataclass(frozen=True)
class RunChange:
    """One run event a write recorded (run_events): its kind and the runs before and
    after it (none for a created run's before or a deleted run's after, several for a
    merge's before or a split's after)."""

    kind: str
    before: tuple[Run, ...]
    after: tuple[Run, ...]


@dataclass(frozen=True)
class MarkResult:
    run: Run
    local_date: dt.date
    change: Change
    time_zone: str
    events: tuple[str, ...]
    changes: tuple[RunChange, ...] = ()
    """The events with their runs, for telemetry; empty for a replay."""


@dataclass(frozen=True)
class UnmarkResult:
    removed: bool
    change: Change
    runs: tuple[Run, ...]
    events: tuple[str, ...]
    changes: tuple[RunChange, ...] = ()
    """The events with their runs, for telemetry; empty for a replay."""


@dataclass(frozen=True)
class BackfillResult:
    added_days: int
    runs: tuple[Run, ...]
    time_zone: str
    events: tuple[str, ...]
    changes: tuple[RunChange, ...] = ()
    """The events with their runs, for telemetry; empty for a replay."""


@dataclass(frozen=True)
class ActiveRun:
    run: Run | None
    current: bool
    current_streak_days: int
    time_zone: str


@dataclass(frozen=True)
class RunPage:
    runs: tuple[Run, ...]
    next_page_token: str
