"""Proto <-> domain conversion. Validation of fields uses the domain rules."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from potato.runs.v2 import run_pb2, runs_service_pb2
from potato_runs.deadline import Deadline
from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.model import MAX_BACKFILL_DATES, Change, Run
from potato_runs.domain.request_ids import parse_request_id
from potato_runs.service import commands

_CHANGE = {
    Change.NONE: run_pb2.RUN_CHANGE_NONE,
    Change.CREATED: run_pb2.RUN_CHANGE_CREATED,
    Change.EXTENDED: run_pb2.RUN_CHANGE_EXTENDED,
    Change.MERGED: run_pb2.RUN_CHANGE_MERGED,
    Change.SHRUNK: run_pb2.RUN_CHANGE_SHRUNK,
    Change.SPLIT: run_pb2.RUN_CHANGE_SPLIT,
    Change.DELETED: run_pb2.RUN_CHANGE_DELETED,
}

MAX_SOURCE_LENGTH = 64
EARLIEST_MARK_TIME = int(dt.datetime(2024, 12, 30, tzinfo=dt.UTC).timestamp())
LATEST_MARK_TIME = int(dt.datetime(9000, 1, 1, tzinfo=dt.UTC).timestamp())


def change_to_proto(change: Change) -> run_pb2.RunChange:
    return _CHANGE[change]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND = dt.timedelta(seconds=1)


def _set_time(target: timestamp_pb2.Timestamp, value: dt.datetime | None) -> None:
    """Writes `value` into `target` (left unset for None): two field assignments, where
    Timestamp.FromDatetime validates and converts in Python (3x the cost, three times
    per run of every response). Naive means UTC, as FromDatetime reads it."""
    if value is not None:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - _EPOCH
        target.seconds = delta // _SECOND
        target.nanos = delta.microseconds * 1000


def _timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    _set_time(ts, value)
    return ts


def fill_run(target: run_pb2.Run, run: Run) -> run_pb2.Run:
    """Writes `run` into `target`, a field of the response being built: the message is
    built once, in place (a Run passed to a constructor is copied)."""
    target.user_id = str(run.user_id)
    target.start_date = run.start_date.isoformat()
    target.end_date = run.end_date.isoformat()
    target.day_count = run.day_count
    target.active = run.active
    _set_time(target.create_time, run.created_at)
    _set_time(target.update_time, run.updated_at)
    _set_time(target.last_extend_time, run.last_extended_at)
    return target


def run_to_proto(run: Run) -> run_pb2.Run:
    return fill_run(run_pb2.Run(), run)


def call_context(context: grpc.aio.ServicerContext[Any, Any], default_timeout: float,
                 max_timeout: float) -> commands.CallContext:
    request_id = None
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            request_id = value[:128]
    return commands.CallContext(
        deadline=Deadline.from_rpc(context.time_remaining(), default_timeout, max_timeout),
        request_id=request_id)


def _zone(request: Any, errors: ValidationCollector) -> str | None:
    if not request.HasField("time_zone"):
        return None
    return rules.parse_zone(request.time_zone, errors)


def _source(value: str, errors: ValidationCollector) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        errors.add("source", Reason.INVALID_VALUE, "source must not contain control characters")
    elif len(value) > MAX_SOURCE_LENGTH:
        errors.add("source", Reason.INVALID_VALUE,
                   f"source is longer than {MAX_SOURCE_LENGTH} characters")
    return value


def mark_day(req: runs_service_pb2.MarkDayRequest) -> commands.MarkDay:
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    zone = _zone(req, errors)
    local_date: dt.date | None = None
    mark_time: dt.datetime | None = None
    which = req.WhichOneof("day")
    if which == "local_date":
        local_date = rules.parse_date(req.local_date, errors, "local_date")
    elif which == "mark_time":
        ts = req.mark_time
        if ts.nanos < 0 or ts.nanos > 999_999_999:
            errors.add("mark_time", Reason.INVALID_VALUE, "mark_time is not a valid timestamp")
        elif ts.seconds < EARLIEST_MARK_TIME:
            # Before 2024-12-30T00:00Z no zone (the earliest is UTC+14) is in 2025 yet.
            errors.add("mark_time", Reason.DATE_BEFORE_LAUNCH,
                       "mark_time is before 2025-01-01 in every time zone")
        elif ts.seconds > LATEST_MARK_TIME:
            errors.add("mark_time", Reason.DATE_IN_FUTURE, "mark_time is far in the future")
        else:
            mark_time = ts.ToDatetime(tzinfo=dt.UTC)
    else:
        errors.add("day", Reason.MISSING_FIELD, "one of local_date or mark_time is required")
    source = _source(req.source, errors)
    request_id = parse_request_id(req.request_id, errors)
    errors.raise_if_any()
    assert user_id is not None
    return commands.MarkDay(user_id=user_id, local_date=local_date, mark_time=mark_time,
                            time_zone=zone, source=source, request_id=request_id)


def unmark_command(user_id: str, day: str, field: str, request_id: str = "",
                   request_id_field: str = "request_id") -> commands.UnmarkDay:
    """An UnmarkDay command from a user id and a date named `field` (v1: `date`), and
    an AIP-155 request id found in `request_id_field` (v1: the `potato-request-id`
    metadata)."""
    errors = ValidationCollector()
    uid = rules.parse_user_id(user_id, errors)
    local_date = rules.parse_date(day, errors, field)
    rid = parse_request_id(request_id, errors, request_id_field)
    errors.raise_if_any()
    assert uid is not None and local_date is not None
    return commands.UnmarkDay(user_id=uid, local_date=local_date, request_id=rid)


def unmark_day(req: runs_service_pb2.UnmarkDayRequest) -> commands.UnmarkDay:
    return unmark_command(req.user_id, req.local_date, "local_date", req.request_id)


def backfill_days(req: runs_service_pb2.BackfillDaysRequest) -> commands.BackfillDays:
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    zone = _zone(req, errors)
    dates: list[dt.date] = []
    fields: list[str] = []
    if not req.local_dates:
        errors.add("local_dates", Reason.MISSING_FIELD, "at least one date is required")
    elif len(req.local_dates) > MAX_BACKFILL_DATES:
        errors.add("local_dates", Reason.TOO_MANY_DATES,
                   f"{len(req.local_dates)} dates given; at most {MAX_BACKFILL_DATES} per call")
    else:
        for i, raw in enumerate(req.local_dates):
            d = rules.parse_date(raw, errors, f"local_dates[{i}]")
            if d is not None:
                dates.append(d)
                fields.append(f"local_dates[{i}]")
    source = _source(req.source, errors)
    request_id = parse_request_id(req.request_id, errors)
    if user_id is None or (req.HasField("time_zone") and zone is None):
        errors.raise_if_any()   # without the user or the zone no date can be judged further
    assert user_id is not None
    # Other violations go with the command: the use case adds the dates in the future
    # and reports everything in one error.
    return commands.BackfillDays(user_id=user_id, local_dates=tuple(dates), time_zone=zone,
                                 source=source, date_fields=tuple(fields),
                                 violations=tuple(errors.violations), request_id=request_id)


def user_id_only(value: str) -> uuid.UUID:
    errors = ValidationCollector()
    user_id = rules.parse_user_id(value, errors)
    errors.raise_if_any()
    assert user_id is not None
    return user_id


def list_runs(req: runs_service_pb2.ListRunsRequest) -> commands.ListRuns:
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    size = rules.page_size(req.page_size, errors)
    before = None
    if user_id is not None:
        before = rules.decode_page_token(req.page_token, user_id, errors)
    errors.raise_if_any()
    assert user_id is not None
    return commands.ListRuns(user_id=user_id, page_size=size, before_end_date=before)
