"""AdminService servicer: rebuild and check for internal tools."""

from __future__ import annotations

import re
import uuid
from typing import Any

import grpc

from potato.runs.v2 import admin_service_pb2, admin_service_pb2_grpc
from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.rollout import SHADOW_WINDOW_HOURS
from potato_runs.service import commands
from potato_runs.service.admin_service import AdminService
from potato_runs.service.blue_green import BlueGreenService, no_owner_connection
from potato_runs.service.flags import FlagService
from potato_runs.service.totals_reconcile import TotalsReconciler
from potato_runs.storage.blue_green import CONFIRM, BlueGreenReport
from potato_runs.transport import convert, flags_convert
from potato_runs.transport.status import maps_errors

Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_CHECK_LIMIT = 10_000
MAX_BATCH_SIZE = 10_000
DEFAULT_REBUILD_BATCH = 500
DEFAULT_DIFF_BATCH = 1000
DEFAULT_RECONCILE_BATCH = 1000
MAX_DRIFTED_LISTED = 20
"""Drifted users a ReconcileTotals response lists (the counts cover all of them)."""
BATCH_DEFAULT_TIMEOUT = 120.0
"""Seconds a batch call may take when the client set no deadline (batches are long)."""
BATCH_MAX_TIMEOUT = 600.0
"""Cap on the deadline honoured for a batch call (the admin pool's command timeout)."""
MAX_WINDOW_HOURS = 24 * 90
_FLAG_NAME = re.compile(r"ff\.[a-z0-9_]+(\.[a-z0-9_]+)*")


def _batch_size(value: int, default: int, errors: ValidationCollector) -> int:
    if value < 0:
        errors.add("page_size", Reason.INVALID_PAGE_SIZE, "page_size must not be negative")
    return min(value or default, MAX_BATCH_SIZE)


def _next_token(last_user: uuid.UUID | None, scanned: int, size: int) -> str:
    """The cursor after a batch; empty when the batch was the last (shorter than asked)."""
    return rules.encode_user_cursor(last_user) if last_user is not None and scanned == size else ""


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, service: AdminService, default_timeout: float, max_timeout: float,
                 *, flags: FlagService, totals: TotalsReconciler,
                 blue_green: BlueGreenService | None = None) -> None:
        self._service = service
        self._blue_green = blue_green
        self._flags = flags
        self._totals = totals
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout

    async def _batch(self, request: Any, context: Ctx, default: int
                     ) -> tuple[int, uuid.UUID | None, commands.CallContext, int]:
        """What every batch call validates and needs: (size, cursor, call context, the
        user count on the first page only)."""
        errors = ValidationCollector()
        size = _batch_size(request.page_size, default, errors)
        after = rules.decode_user_cursor(request.page_token, errors)
        errors.raise_if_any()
        ctx = convert.call_context(context, BATCH_DEFAULT_TIMEOUT, BATCH_MAX_TIMEOUT)
        total = (await self._service.count_users(ctx.deadline.timeout())
                 if not request.page_token else 0)
        return size, after, ctx, total

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
        # A check of everyone is a long call: the batch deadline limits apply.
        ctx = (convert.call_context(context, self._default_timeout, self._max_timeout) if user_id
               else convert.call_context(context, BATCH_DEFAULT_TIMEOUT, BATCH_MAX_TIMEOUT))
        violations, truncated = await self._service.check(user_id, limit,
                                                          timeout=ctx.deadline.timeout())
        return admin_service_pb2.CheckInvariantsResponse(
            violations=[admin_service_pb2.InvariantViolation(
                code=v.code, user_id=str(v.user_id), detail=v.detail) for v in violations],
            truncated=truncated)

    @maps_errors
    async def RebuildRunsBatch(self, request: admin_service_pb2.RebuildRunsBatchRequest,
                               context: Ctx) -> admin_service_pb2.RebuildRunsBatchResponse:
        size, after, ctx, total = await self._batch(request, context, DEFAULT_REBUILD_BATCH)
        step = await self._service.rebuild_batch(after, size, dry_run=request.dry_run,
                                                 force=request.force,
                                                 timeout=ctx.deadline.timeout(),
                                                 request_id=ctx.request_id)
        return admin_service_pb2.RebuildRunsBatchResponse(
            users_scanned=step.users_scanned,
            drifted_users=[admin_service_pb2.RebuiltUser(
                user_id=str(u), runs_added=len(p.diff.added), runs_removed=len(p.diff.removed),
                runs_changed=len(p.diff.changed)) for u, p in step.drifted],
            failed_users=[admin_service_pb2.FailedUser(user_id=str(u), error=e)
                          for u, e in step.failed],
            next_page_token=_next_token(step.last_user, step.users_scanned, size),
            total_users=total)

    @maps_errors
    async def DiffPopulation(self, request: admin_service_pb2.DiffPopulationRequest,
                             context: Ctx) -> admin_service_pb2.DiffPopulationResponse:
        size, after, ctx, total = await self._batch(request, context, DEFAULT_DIFF_BATCH)
        step = await self._service.diff_batch(after, size, timeout=ctx.deadline.timeout())
        return admin_service_pb2.DiffPopulationResponse(
            users_scanned=step.users_scanned, users_different=step.users_different,
            classes=[admin_service_pb2.DiffClassCount(
                difference_class=c.name, users=c.users,
                example_user_ids=[str(u) for u in c.examples]) for c in step.classes],
            checkins_scanned=step.checkins_scanned,
            next_page_token=_next_token(step.last_user, step.users_scanned, size),
            total_users=total)

    @maps_errors
    async def ReconcileTotals(self, request: admin_service_pb2.ReconcileTotalsRequest,
                              context: Ctx) -> admin_service_pb2.ReconcileTotalsResponse:
        size, after, ctx, total = await self._batch(request, context, DEFAULT_RECONCILE_BATCH)
        step = await self._totals.reconcile_batch(after, size, dry_run=request.dry_run,
                                                  timeout=ctx.deadline.timeout())
        return admin_service_pb2.ReconcileTotalsResponse(
            users_checked=step.users_checked, rows_drifted=step.rows_drifted,
            rows_repaired=step.rows_repaired,
            drifted_users=[admin_service_pb2.DriftedTotals(user_id=str(u), rows_drifted=n)
                           for u, n in step.drifted[:MAX_DRIFTED_LISTED]],
            failed_users=[admin_service_pb2.FailedUser(user_id=str(u), error=e)
                          for u, e in step.failed],
            next_page_token=_next_token(step.last_user, step.users_checked, size),
            total_users=total)

    @maps_errors
    async def GetShadowStats(self, request: admin_service_pb2.GetShadowStatsRequest,
                             context: Ctx) -> admin_service_pb2.GetShadowStatsResponse:
        errors = ValidationCollector()
        if not request.flag:
            errors.add("flag", Reason.MISSING_FIELD, "flag is required, e.g. ff.potato.runs_v2")
        elif not _FLAG_NAME.fullmatch(request.flag):
            errors.add("flag", Reason.INVALID_VALUE,
                       f"{rules.echo(request.flag)} is not a flag name such as ff.potato.runs_v2")
        if request.window_hours < 0 or request.window_hours > MAX_WINDOW_HOURS:
            errors.add("window_hours", Reason.INVALID_VALUE,
                       f"window_hours must be between 0 (24) and {MAX_WINDOW_HOURS}")
        errors.raise_if_any()
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        stats = await self._service.shadow_stats(request.flag,
                                                 request.window_hours or SHADOW_WINDOW_HOURS,
                                                 timeout=ctx.deadline.timeout())
        return admin_service_pb2.GetShadowStatsResponse(
            stats=[admin_service_pb2.ShadowStat(method=m, result=r, count=n)
                   for (m, r), n in sorted(stats.counts.items())],
            stored_mismatches=stats.stored_mismatches)

    # -- feature flags (AIP-131/132/134) ------------------------------------------
    @maps_errors
    async def GetFlag(self, request: admin_service_pb2.GetFlagRequest,
                      context: Ctx) -> admin_service_pb2.GetFlagResponse:
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        flag = await self._flags.get(request.name, ctx.deadline.timeout())
        return admin_service_pb2.GetFlagResponse(flag=flags_convert.flag_to_proto(flag))

    @maps_errors
    async def ListFlags(self, request: admin_service_pb2.ListFlagsRequest,
                        context: Ctx) -> admin_service_pb2.ListFlagsResponse:
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        flags = await self._flags.list(ctx.deadline.timeout())
        return admin_service_pb2.ListFlagsResponse(
            flags=[flags_convert.flag_to_proto(f) for f in flags])

    @maps_errors
    async def UpdateFlag(self, request: admin_service_pb2.UpdateFlagRequest,
                         context: Ctx) -> admin_service_pb2.UpdateFlagResponse:
        errors = ValidationCollector()
        update = flags_convert.update_from_proto(request, errors)
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        flag = await self._flags.update(
            request.flag.name, update, actor=flags_convert.actor(context),
            reason=request.reason, timeout=ctx.deadline.timeout(), errors=errors)
        return admin_service_pb2.UpdateFlagResponse(flag=flags_convert.flag_to_proto(flag))

    @maps_errors
    async def RollbackFlag(self, request: admin_service_pb2.RollbackFlagRequest,
                           context: Ctx) -> admin_service_pb2.RollbackFlagResponse:
        ctx = convert.call_context(context, self._default_timeout, self._max_timeout)
        flag = await self._flags.rollback(
            request.name, actor=flags_convert.actor(context), reason=request.reason,
            timeout=ctx.deadline.timeout())
        return admin_service_pb2.RollbackFlagResponse(flag=flags_convert.flag_to_proto(flag))

    # -- the blue/green full rebuild ------------------------------------------------
    @maps_errors
    async def RebuildAllRuns(self, request: admin_service_pb2.RebuildAllRunsRequest,
                             context: Ctx) -> admin_service_pb2.RebuildAllRunsResponse:
        errors = ValidationCollector()
        if not request.blue_green:
            errors.add("blue_green", Reason.INVALID_VALUE,
                       "blue_green must be true (RebuildRunsBatch replays users one by one)")
        if not request.validate_only and request.confirm != CONFIRM:
            errors.add("confirm", Reason.MISSING_FIELD if not request.confirm
                       else Reason.INVALID_VALUE,
                       f'confirm must be "{CONFIRM}" for a rebuild (or set validate_only)')
        errors.raise_if_any()
        ctx = convert.call_context(context, BATCH_DEFAULT_TIMEOUT, BATCH_MAX_TIMEOUT)
        if self._blue_green is None:
            raise no_owner_connection()
        report = await self._blue_green.rebuild_all(validate_only=request.validate_only,
                                           request_id=ctx.request_id)
        return report_to_proto(report)


def report_to_proto(r: BlueGreenReport) -> admin_service_pb2.RebuildAllRunsResponse:
    return admin_service_pb2.RebuildAllRunsResponse(
        rebuild_id=r.rebuild_id, validate_only=r.validate_only, facts=r.facts, users=r.users,
        runs=r.runs, runs_kept=r.runs_kept, users_changed=r.users_changed,
        catchup_users=r.catchup_users, swap_attempts=r.swap_attempts,
        max_write_block_seconds=r.max_write_block_seconds,
        phases=[admin_service_pb2.RebuildPhase(name=k, seconds=v)
                for k, v in r.phase_seconds.items()],
        old_table_dropped=r.old_table_dropped, seconds=r.seconds)
