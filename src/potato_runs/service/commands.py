"""Validated inputs of the use cases (built by the transport from requests)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from potato_runs.deadline import Deadline
from potato_runs.domain.errors import FieldViolation


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
    request_id: uuid.UUID | None = None
    """The AIP-155 request id (v2: the field; v1: `potato-request-id` metadata): the
    write happens once per id. Not CallContext.request_id (`x-request-id`, tracing)."""


@dataclass(frozen=True)
class UnmarkDay:
    user_id: uuid.UUID
    local_date: dt.date
    request_id: uuid.UUID | None = None
    """The AIP-155 request id (see MarkDay.request_id)."""


@dataclass(frozen=True)
class BackfillDays:
    user_id: uuid.UUID
    local_dates: tuple[dt.date, ...]
    time_zone: str | None
    source: str = ""
    date_fields: tuple[str, ...] = ()
    """The request field of each date (e.g. "local_dates[3]"); default: its position."""
    violations: tuple[FieldViolation, ...] = ()
    """What parsing found wrong (e.g. malformed dates): the use case reports them
    together with its own checks (dates in the future), in one error."""
    request_id: uuid.UUID | None = None
    """The AIP-155 request id (see MarkDay.request_id)."""


@dataclass(frozen=True)
class ListRuns:
    user_id: uuid.UUID
    page_size: int
    before_end_date: dt.date | None
