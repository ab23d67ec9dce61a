"""AdminService servicer: rebuild and check for internal tools."""

from __future__ import annotations

from typing import Any

import grpc

from potato.runs.v2 import admin_service_pb2, admin_service_pb2_grpc
from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.service.admin_service import AdminService
from potato_runs.transport import convert
from potato_runs.transport.status import maps_errors

Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_CHECK_LIMIT = 10_000


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, service: AdminService, default_timeout: float, max_timeout: float) -> None:
        self._service = service
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout

    @maps_errors
    async def RebuildUserRuns(self, request: admin_service_pb2.RebuildUserRunsRequest,
                              context: Ctx) -> admin_service_pb2.RebuildUserRunsResponse:
        errors = ValidationCollector()
        user_id = rules.parse_user_id(request.user_id, errors)
        lo = rules.parse_date(request.from_date, errors, "from_date") if request.from_date else None
        hi = rules.parse_date(request.to_date, errors, "to_date") if request.to_date else None
        errors.raise_if_any()
        assert user_id is not None
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        plan = await self._service.rebuild_user(user_id, lo, hi, request.dry_run, ctx.request_id,
                                                ctx.deadline.timeout())
        d = plan.diff
        return admin_service_pb2.RebuildUserRunsResponse(
            added=[convert.run_to_proto(r) for r in d.added],
            removed=[convert.run_to_proto(r) for r in d.removed],
            changed=[admin_service_pb2.RunRevision(before=convert.run_to_proto(c.before),
                                                   after=convert.run_to_proto(c.after))
                     for c in d.changed],
            rebuilt_from_date=plan.window[0].isoformat() if plan.window else "",
            rebuilt_to_date=plan.window[1].isoformat() if plan.window else "",
            dry_run=request.dry_run)

    @maps_errors
    async def CheckInvariants(self, request: admin_service_pb2.CheckInvariantsRequest,
                              context: Ctx) -> admin_service_pb2.CheckInvariantsResponse:
        errors = ValidationCollector()
        user_id = rules.parse_user_id(request.user_id, errors) if request.user_id else None
        if request.limit < 0:
            errors.add("limit", Reason.INVALID_VALUE, "limit must not be negative")
        errors.raise_if_any()
        limit = min(request.limit or 1000, MAX_CHECK_LIMIT)
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        violations, truncated = await self._service.check(user_id, limit,
                                                          timeout=ctx.deadline.timeout())
        return admin_service_pb2.CheckInvariantsResponse(
            violations=[admin_service_pb2.InvariantViolation(
                code=v.code, user_id=str(v.user_id), detail=v.detail) for v in violations],
            truncated=truncated)
