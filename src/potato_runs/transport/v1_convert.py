"""Proto <-> domain conversion for the legacy potato.runs.v1 contract.

v1 names the day `date` (v2: `local_date`), so violations the shared write path
reports on `local_date` are renamed to `date` for v1 callers (`v1_field_names`)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterable, Iterator

from potato.runs.v1 import runs_service_pb2 as pb
from potato_runs.domain import rules
from potato_runs.domain.errors import DomainError, ValidationCollector
from potato_runs.domain.model import Run
from potato_runs.domain.reads import CurrentRunAnswer, RunsAnswer, RunView, StatsAnswer
from potato_runs.domain.request_ids import parse_request_id
from potato_runs.service import commands
from potato_runs.transport import convert

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_RENAMED = {"local_date": "date"}
REQUEST_ID_METADATA = "potato-request-id"
"""v1 writes take their AIP-155 request id from this metadata key (the v1 messages are
frozen; v2 has a `request_id` field). Same semantics as v2's field."""


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The `potato-request-id` value ("" when absent). Several values are joined with
    "," so that they fail validation (INVALID_REQUEST_ID) rather than one being picked."""
    values = [v if isinstance(v, str) else v.decode("latin-1")
              for k, v in metadata or () if k == REQUEST_ID_METADATA]
    return ",".join(values)


@contextlib.contextmanager
def v1_field_names() -> Iterator[None]:
    """Re-raises a DomainError with v1's field names in its violations."""
    try:
        yield
    except DomainError as err:
        if not any(v.field in _RENAMED for v in err.violations):
            raise
        violations = tuple(dataclasses.replace(v, field=_RENAMED.get(v.field, v.field))
                           for v in err.violations)
        message = err.message
        for old, new in _RENAMED.items():
            message = message.replace(f"{old}:", f"{new}:")
        raise dataclasses.replace(err, message=message, violations=violations) from err


def mark_day(req: pb.MarkDayRequest, request_id: str = "") -> commands.MarkDay:
    """`request_id`: the `potato-request-id` metadata value ("" when absent)."""
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    zone = rules.parse_zone(req.time_zone, errors) if req.HasField("time_zone") else None
    day = rules.parse_date(req.date, errors, "date")
    rid = parse_request_id(request_id, errors, REQUEST_ID_METADATA)
    errors.raise_if_any()
    assert user_id is not None and day is not None
    return commands.MarkDay(user_id=user_id, local_date=day, mark_time=None, time_zone=zone,
                            source="v1", request_id=rid)


def unmark_day(req: pb.UnmarkDayRequest, request_id: str = "") -> commands.UnmarkDay:
    """`request_id`: the `potato-request-id` metadata value ("" when absent)."""
    return convert.unmark_command(req.user_id, req.date, "date", request_id,
                                  REQUEST_ID_METADATA)


user_id_only = convert.user_id_only


def list_runs(req: pb.ListRunsRequest) -> tuple[uuid.UUID, int]:
    """(user_id, limit): 0 means 20, above 100 is capped, negative is INVALID_PAGE_SIZE."""
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    limit = rules.page_size(req.limit, errors, default=DEFAULT_LIMIT, maximum=MAX_LIMIT,
                            field="limit")
    errors.raise_if_any()
    assert user_id is not None
    return user_id, limit


def run_to_proto(run: Run | RunView) -> pb.Run:
    return pb.Run(start_date=run.start_date.isoformat(), end_date=run.end_date.isoformat(),
                  day_count=run.day_count, active=run.active)


def current_run_to_proto(answer: CurrentRunAnswer) -> pb.GetCurrentRunResponse:
    return pb.GetCurrentRunResponse(
        run=run_to_proto(answer.run) if answer.run else None,
        current_streak_days=answer.current_streak_days)


def runs_to_proto(answer: RunsAnswer) -> pb.ListRunsResponse:
    return pb.ListRunsResponse(runs=[run_to_proto(r) for r in answer.runs])


def stats_to_proto(answer: StatsAnswer) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(total_days=answer.total_days,
                               longest_run_days=answer.longest_run_days,
                               current_streak_days=answer.current_streak_days,
                               run_count=answer.run_count)
