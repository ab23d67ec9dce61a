"""potato.runs.v2.TotalsService servicer: convert, call one use case, convert back.

Every read sends the initial metadata `potato-read-source: computed|stored`, naming the
path that produced the answer; a shadow comparison is handed over from the RPC's done
callback, so it runs only after the response has been sent."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from potato.runs.v2 import totals_service_pb2 as pb
from potato.runs.v2 import totals_service_pb2_grpc
from potato_runs.domain.totals_answers import TotalsAnswers
from potato_runs.service.totals_service import Served, TotalsService
from potato_runs.transport import convert, totals_convert
from potato_runs.transport.status import maps_errors
from potato_runs.transport.v1_servicer import READ_SOURCE

Ctx = grpc.aio.ServicerContext[Any, Any]
A = TypeVar("A", bound=TotalsAnswers)


class TotalsServicer(totals_service_pb2_grpc.TotalsServiceServicer):  # type: ignore[misc]
    def __init__(self, service: TotalsService, default_timeout: float,
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
    async def GetTotals(self, request: pb.GetTotalsRequest,
                        context: Ctx) -> pb.GetTotalsResponse:
        served = await self._service.get_totals(totals_convert.get_totals(request),
                                                self._ctx(context))
        return totals_convert.totals_to_proto(await self._serve(served, context))

    @maps_errors
    async def ListMonthlyTotals(self, request: pb.ListMonthlyTotalsRequest,
                                context: Ctx) -> pb.ListMonthlyTotalsResponse:
        served = await self._service.list_monthly_totals(
            totals_convert.list_monthly_totals(request), self._ctx(context))
        return totals_convert.monthly_to_proto(await self._serve(served, context))
