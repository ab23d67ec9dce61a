"""The runs use cases."""

from __future__ import annotations

import uuid

from potato_runs.clock import Clock
from potato_runs.domain import rules
from potato_runs.domain.errors import FieldViolation, ValidationCollector
from potato_runs.domain.model import ActiveRun, BackfillResult, MarkResult, RunPage, UnmarkResult
from potato_runs.service.commands import BackfillDays, CallContext, ListRuns, MarkDay, UnmarkDay
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.runs_repo import RunsRepository


def _request_order(v: FieldViolation) -> int:
    """Field violations of a backfill in request order: other fields, then local_dates[i]."""
    head, _, rest = v.field.partition("[")
    return int(rest.rstrip("]")) if head == "local_dates" and rest[:-1].isdigit() else -1


class RunsService:
    def __init__(self, repo: RunsRepository, clock: Clock, telemetry: Telemetry) -> None:
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry

    async def mark_day(self, cmd: MarkDay, ctx: CallContext) -> MarkResult:
        now = self._clock.now()
        local_date = cmd.local_date
        if cmd.time_zone is not None:
            # The zone is known without a database trip: check here, fail early.
            errors = ValidationCollector()
            field = "local_date"
            if local_date is None and cmd.mark_time is not None:
                local_date = rules.local_date_of(cmd.mark_time, cmd.time_zone)
                field = "mark_time"
            assert local_date is not None
            rules.check_markable(local_date, rules.today_in(now, cmd.time_zone), errors, field)
            errors.raise_if_any()
        with self._telemetry.write_span("MarkDay", cmd.user_id):
            result = await self._repo.mark_day(
                cmd.user_id, local_date, cmd.mark_time if local_date is None else None,
                cmd.time_zone, cmd.source, now, ctx.request_id, ctx.deadline)
        self._telemetry.record_events(result.events)
        return result

    async def unmark_day(self, cmd: UnmarkDay, ctx: CallContext) -> UnmarkResult:
        errors = ValidationCollector()
        rules.check_markable(cmd.local_date, None, errors, "local_date")
        errors.raise_if_any()
        with self._telemetry.write_span("UnmarkDay", cmd.user_id):
            result = await self._repo.unmark_day(cmd.user_id, cmd.local_date, self._clock.now(),
                                                 ctx.request_id, ctx.deadline)
        self._telemetry.record_events(result.events)
        return result

    async def backfill_days(self, cmd: BackfillDays, ctx: CallContext) -> BackfillResult:
        now = self._clock.now()
        errors = ValidationCollector()
        # Backfill is not the hot path: one extra read of the stored zone lets us
        # report every bad date at once (the database re-checks under the lock).
        zone = cmd.time_zone or await self._repo.get_zone(cmd.user_id, ctx.deadline)
        today = rules.today_in(now, zone) if zone is not None else None
        fields = cmd.date_fields or tuple(f"local_dates[{i}]" for i in range(len(cmd.local_dates)))
        for field, d in zip(fields, cmd.local_dates, strict=True):
            rules.check_markable(d, today, errors, field)
        # With what parsing found (malformed dates...), in request order: one error for all.
        errors.violations = sorted([*cmd.violations, *errors.violations], key=_request_order)
        errors.raise_if_any()
        with self._telemetry.write_span("BackfillDays", cmd.user_id):
            result = await self._repo.backfill_days(cmd.user_id, cmd.local_dates, cmd.time_zone,
                                                    cmd.source, now, ctx.request_id, ctx.deadline)
        self._telemetry.record_events(result.events)
        return result

    async def get_active_run(self, user_id: uuid.UUID, ctx: CallContext) -> ActiveRun:
        zone, run = await self._repo.get_active(user_id, ctx.deadline)
        current, streak = rules.current_streak(run, zone, self._clock.now())
        return ActiveRun(run=run, current=current, current_streak_days=streak,
                         time_zone=zone or "")

    async def list_runs(self, cmd: ListRuns, ctx: CallContext) -> RunPage:
        rows = await self._repo.list_runs(cmd.user_id, cmd.before_end_date, cmd.page_size + 1,
                                          ctx.deadline)
        page = rows[: cmd.page_size]
        token = ""
        if len(rows) > cmd.page_size and page:
            token = rules.encode_page_token(cmd.user_id, page[-1].end_date)
        return RunPage(runs=tuple(page), next_page_token=token)
