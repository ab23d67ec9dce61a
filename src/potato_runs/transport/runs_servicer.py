"""RunsService servicer: convert, call one use case, convert back."""

from __future__ import annotations

from typing import Any

import grpc

from potato.runs.v2 import runs_service_pb2, runs_service_pb2_grpc
from potato_runs.service.runs_service import RunsService
from potato_runs.transport import convert
from potato_runs.transport.status import maps_errors

Ctx = grpc.aio.ServicerContext[Any, Any]


class RunsServicer(runs_service_pb2_grpc.RunsServiceServicer):  # type: ignore[misc]
    def __init__(self, service: RunsService, default_timeout: float, max_timeout: float) -> None:
        self._service = service
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout

    def _ctx(self, context: Ctx) -> Any:
        return convert.call_context(context, self._default_timeout, self._max_timeout)

    @maps_errors
    async def MarkDay(self, request: runs_service_pb2.MarkDayRequest,
                      context: Ctx) -> runs_service_pb2.MarkDayResponse:
        result = await self._service.mark_day(convert.mark_day(request), self._ctx(context))
        response = runs_service_pb2.MarkDayResponse(
            local_date=result.local_date.isoformat(),
            change=convert.change_to_proto(result.change), time_zone=result.time_zone)
        convert.fill_run(response.run, result.run)
        return response

    @maps_errors
    async def UnmarkDay(self, request: runs_service_pb2.UnmarkDayRequest,
                        context: Ctx) -> runs_service_pb2.UnmarkDayResponse:
        result = await self._service.unmark_day(convert.unmark_day(request), self._ctx(context))
        return runs_service_pb2.UnmarkDayResponse(
            removed=result.removed, change=convert.change_to_proto(result.change),
            runs=[convert.run_to_proto(r) for r in result.runs])

    @maps_errors
    async def BackfillDays(self, request: runs_service_pb2.BackfillDaysRequest,
                           context: Ctx) -> runs_service_pb2.BackfillDaysResponse:
        result = await self._service.backfill_days(convert.backfill_days(request),
                                                   self._ctx(context))
        return runs_service_pb2.BackfillDaysResponse(
            added_days=result.added_days, runs=[convert.run_to_proto(r) for r in result.runs])

    @maps_errors
    async def GetActiveRun(self, request: runs_service_pb2.GetActiveRunRequest,
                           context: Ctx) -> runs_service_pb2.GetActiveRunResponse:
        result = await self._service.get_active_run(convert.user_id_only(request.user_id),
                                                    self._ctx(context))
        response = runs_service_pb2.GetActiveRunResponse(
            current=result.current, current_streak_days=result.current_streak_days,
            time_zone=result.time_zone)
        if result.run:
            convert.fill_run(response.run, result.run)
        return response

    @maps_errors
    async def ListRuns(self, request: runs_service_pb2.ListRunsRequest,
                       context: Ctx) -> runs_service_pb2.ListRunsResponse:
        page = await self._service.list_runs(convert.list_runs(request), self._ctx(context))
        response = runs_service_pb2.ListRunsResponse(next_page_token=page.next_page_token)
        for r in page.runs:
            convert.fill_run(response.runs.add(), r)
        return response
