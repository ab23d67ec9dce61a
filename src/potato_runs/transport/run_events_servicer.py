"""RunEventsService servicer: WatchRunEvents, a server stream written with context.write.

Coroutine style (not an async generator), so the registration's interceptors (access
control, the watcher limit) wrap it like any unary handler (`await behavior(...)`).

A client that stops reading blocks `context.write` (gRPC flow control): the handler
then holds one message, gRPC's window holds a few more, and the hub keeps queueing live
events for it up to the queue's size, then drops it (and the queue). The status cannot
overtake the messages already handed to gRPC (HTTP/2 sends trailers after the data;
gRPC refuses to send a status while a write is pending), so the stream ends with
RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW, last_event_id = the last event written) right after
those messages: a client that reads again gets them, then the status, and resumes from
the last event_id it got. A client that never reads again holds only that bounded memory
until it disconnects.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from potato.runs.v2 import run_events_service_pb2 as pb
from potato.runs.v2 import run_events_service_pb2_grpc
from potato_runs.domain import rules
from potato_runs.domain.errors import DomainError, Reason, ValidationCollector
from potato_runs.domain.run_events import RunEvent
from potato_runs.service.run_events import RunEventsService
from potato_runs.transport.convert import run_to_proto
from potato_runs.transport.status import maps_errors

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

_KINDS = {
    "run_created": pb.RUN_EVENT_KIND_CREATED,
    "run_extended": pb.RUN_EVENT_KIND_EXTENDED,
    "run_merged": pb.RUN_EVENT_KIND_MERGED,
    "run_split": pb.RUN_EVENT_KIND_SPLIT,
    "run_shrunk": pb.RUN_EVENT_KIND_SHRUNK,
    "run_deleted": pb.RUN_EVENT_KIND_DELETED,
    "run_deactivated": pb.RUN_EVENT_KIND_DEACTIVATED,
    "run_activated": pb.RUN_EVENT_KIND_ACTIVATED,
    "run_rebuilt": pb.RUN_EVENT_KIND_REBUILT,
}
_CAUSES = {
    "mark": pb.RUN_EVENT_CAUSE_MARK,
    "unmark": pb.RUN_EVENT_CAUSE_UNMARK,
    "backfill": pb.RUN_EVENT_CAUSE_BACKFILL,
    "rebuild": pb.RUN_EVENT_CAUSE_REBUILD,
}


def event_to_proto(event: RunEvent) -> pb.RunEvent:
    time = timestamp_pb2.Timestamp()
    time.FromDatetime(event.occurred_at)
    return pb.RunEvent(
        event_id=event.event_id, user_id=str(event.user_id),
        kind=_KINDS.get(event.kind, pb.RUN_EVENT_KIND_UNSPECIFIED),
        cause=_CAUSES.get(event.cause, pb.RUN_EVENT_CAUSE_UNSPECIFIED),
        before=[run_to_proto(r) for r in event.before],
        after=[run_to_proto(r) for r in event.after],
        event_time=time, request_id=event.request_id or "")


def parse_watch(request: pb.WatchRunEventsRequest) -> tuple[Any, int]:
    """(user id or None, cursor); INVALID_ARGUMENT for a malformed user id or a
    negative cursor."""
    errors = ValidationCollector()
    user = rules.parse_user_id(request.user_id, errors) if request.user_id else None
    if request.after_event_id < 0:
        errors.add("after_event_id", Reason.INVALID_CURSOR,
                   "after_event_id must be 0 (from the oldest event kept) or an event_id")
    errors.raise_if_any()
    return user, request.after_event_id


class RunEventsServicer(run_events_service_pb2_grpc.RunEventsServiceServicer):  # type: ignore[misc]
    def __init__(self, service: RunEventsService) -> None:
        self._service = service

    @maps_errors
    async def WatchRunEvents(self, request: pb.WatchRunEventsRequest, context: Ctx) -> None:
        user, after = parse_watch(request)
        stream = await self._service.open(user, after)
        last = after
        try:
            while True:
                try:
                    event = await stream.next()
                except DomainError as err:
                    raise _with_last(err, last) from None
                await context.write(pb.WatchRunEventsResponse(event=event_to_proto(event)))
                last = event.event_id
        finally:
            stream.close()


def _with_last(err: DomainError, last: int) -> DomainError:
    return DomainError(err.kind, err.reason, err.message,
                       {**err.metadata, "last_event_id": str(last)}, err.violations)
