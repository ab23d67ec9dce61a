"""potato.runs.v1.RunsService servicer (legacy contract): convert, call one use case,
convert back. Every read sends the initial metadata `potato-read-source` naming the
path that produced the answer; a shadow comparison is handed over from the RPC's done
callback, so it runs only after the response has been sent."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from potato.runs.v1 import runs_service_pb2 as pb
from potato.runs.v1 import runs_service_pb2_grpc
from potato_runs.domain.reads import Answer
from potato_runs.service.v1_runs import Served, V1RunsService
from potato_runs.transport import convert, v1_convert
from potato_runs.transport.status import maps_errors

Ctx = grpc.aio.ServicerContext[Any, Any]
A = TypeVar("A", bound=Answer)
READ_SOURCE = "potato-read-source"


class V1RunsServicer(runs_service_pb2_grpc.RunsServiceServicer):  # type: ignore[misc]
    def __init__(self, service: V1RunsService, default_timeout: float,
                 max_timeout: float) -> None:
        self._service = service
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout

    def _ctx(self, context: Ctx) -> Any:
        return convert.call_context(context, self._default_timeout, self._max_timeout)

    @staticmethod
    async def _serve(served: Served[A], context: Ctx) -> A:
        await context.send_initial_metadata(((READ_SOURCE, served.source.value),))
        after = served.after_response
        if after is not None:
            # Runs when the RPC has terminated: the response and status are sent.
            context.add_done_callback(lambda _ctx: after())  # type: ignore[arg-type]
        return served.answer

    @maps_errors
    async def MarkDay(self, request: pb.MarkDayRequest, context: Ctx) -> pb.MarkDayResponse:
        with v1_convert.v1_field_names():
            cmd = v1_convert.mark_day(
                request, v1_convert.request_id_from(context.invocation_metadata()))
            result = await self._service.mark_day(cmd, self._ctx(context))
        return pb.MarkDayResponse(run=v1_convert.run_to_proto(result.run))

    @maps_errors
    async def UnmarkDay(self, request: pb.UnmarkDayRequest,
                        context: Ctx) -> pb.UnmarkDayResponse:
        with v1_convert.v1_field_names():
            cmd = v1_convert.unmark_day(
                request, v1_convert.request_id_from(context.invocation_metadata()))
            result = await self._service.unmark_day(cmd, self._ctx(context))
        return pb.UnmarkDayResponse(removed=result.removed)

    @maps_errors
    async def GetCurrentRun(self, request: pb.GetCurrentRunRequest,
                            context: Ctx) -> pb.GetCurrentRunResponse:
        served = await self._service.get_current_run(
            v1_convert.user_id_only(request.user_id), self._ctx(context))
        return v1_convert.current_run_to_proto(await self._serve(served, context))

    @maps_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: Ctx) -> pb.ListRunsResponse:
        user_id, limit = v1_convert.list_runs(request)
        served = await self._service.list_runs(user_id, limit, self._ctx(context))
        return v1_convert.runs_to_proto(await self._serve(served, context))

    @maps_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: Ctx) -> pb.GetStatsResponse:
        served = await self._service.get_stats(v1_convert.user_id_only(request.user_id),
                                               self._ctx(context))
        return v1_convert.stats_to_proto(await self._serve(served, context))
