"""Validated inputs of the use cases (built by the transport from requests)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from potato_runs.deadline import Deadline


@dataclass(frozen=True)
class CallContext:
    deadline: Deadline
    request_id: str | None = None


@dataclass(frozen=True)
class MarkDay:
    user_id: uuid.UUID
    local_date: dt.date | None
    mark_time: dt.datetime | None
    time_zone: str | None
    source: str = ""


@dataclass(frozen=True)
class UnmarkDay:
    user_id: uuid.UUID
    local_date: dt.date


@dataclass(frozen=True)
class BackfillDays:
    user_id: uuid.UUID
    local_dates: tuple[dt.date, ...]
    time_zone: str | None
    source: str = ""


@dataclass(frozen=True)
class ListRuns:
    user_id: uuid.UUID
    page_size: int
    before_end_date: dt.date | None
