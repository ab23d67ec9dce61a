"""The runs use cases."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from potato_runs.clock import Clock
from potato_runs.domain import rules
from potato_runs.domain.errors import FieldViolation, ValidationCollector
from potato_runs.domain.model import ActiveRun, BackfillResult, MarkResult, RunPage, UnmarkResult
from potato_runs.domain.request_ids import RequestKey
from potato_runs.service.commands import BackfillDays, CallContext, ListRuns, MarkDay, UnmarkDay
from potato_runs.service.request_ids import backfill_key, mark_key, unmark_key
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.runs_repo import RunsRepository, backfill_result, mark_result


def _request_order(v: FieldViolation) -> int:
    """Field violations of a backfill in request order: other fields, then local_dates[i]."""
    head, _, rest = v.field.partition("[")
    return int(rest.rstrip("]")) if head == "local_dates" and rest[:-1].isdigit() else -1


class RunsService:
    def __init__(self, repo: RunsRepository, clock: Clock, telemetry: Telemetry) -> None:
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry

    async def _recorded_if_refused(self, errors: ValidationCollector, user_id: uuid.UUID,
                                   key: RequestKey | None,
                                   ctx: CallContext) -> Mapping[str, Any] | None:
        """When the early checks refuse a request that carries a request id, its
        recorded response if it has one (else the checks' error is raised). A retry must
        answer as the first attempt did even where the checks now say otherwise, e.g.
        a backfill of today's date after the user's stored zone moved west, where that
        date has not begun. Costs a lookup only on a refused request with an id."""
        if not errors.violations:
            return None
        if key is not None:
            recorded = await self._repo.recorded(user_id, key, ctx.deadline)
            if recorded is not None:
                return recorded
        errors.raise_if_any()
        return None   # unreachable: raise_if_any raised

    async def mark_day(self, cmd: MarkDay, ctx: CallContext) -> MarkResult:
        now = self._clock.now()
        local_date = cmd.local_date
        key = mark_key(cmd)
        if cmd.time_zone is not None:
            # The zone is known without a database trip: check here, fail early.
            errors = ValidationCollector()
            field = "local_date"
            if local_date is None and cmd.mark_time is not None:
                local_date = rules.local_date_of(cmd.mark_time, cmd.time_zone)
                field = "mark_time"
            assert local_date is not None
            rules.check_markable(local_date, rules.today_in(now, cmd.time_zone), errors, field)
            recorded = await self._recorded_if_refused(errors, cmd.user_id, key, ctx)
            if recorded is not None:
                return mark_result(cmd.user_id, recorded)
        with self._telemetry.write_span("MarkDay", cmd.user_id) as span:
            result = await self._repo.mark_day(
                cmd.user_id, local_date, cmd.mark_time if local_date is None else None,
                cmd.time_zone, cmd.source, now, ctx.request_id, ctx.deadline, key)
            self._telemetry.add_run_events(span, result.changes, ctx.request_id)
        self._telemetry.record_events(result.events)
        return result

    async def unmark_day(self, cmd: UnmarkDay, ctx: CallContext) -> UnmarkResult:
        errors = ValidationCollector()
        rules.check_markable(cmd.local_date, None, errors, "local_date")
        errors.raise_if_any()
        with self._telemetry.write_span("UnmarkDay", cmd.user_id) as span:
            result = await self._repo.unmark_day(cmd.user_id, cmd.local_date, self._clock.now(),
                                                 ctx.request_id, ctx.deadline, unmark_key(cmd))
            self._telemetry.add_run_events(span, result.changes, ctx.request_id)
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
        # A request that did not even parse is never a retry of a recorded one (its key
        # would cover only the dates that parsed): no lookup then.
        key = backfill_key(cmd) if not cmd.violations else None
        errors.violations = sorted([*cmd.violations, *errors.violations], key=_request_order)
        recorded = await self._recorded_if_refused(errors, cmd.user_id, key, ctx)
        if recorded is not None:
            return backfill_result(cmd.user_id, recorded)
        with self._telemetry.write_span("BackfillDays", cmd.user_id) as span:
            result = await self._repo.backfill_days(cmd.user_id, cmd.local_dates, cmd.time_zone,
                                                    cmd.source, now, ctx.request_id, ctx.deadline,
                                                    key)
            self._telemetry.add_run_events(span, result.changes, ctx.request_id)
        self._telemetry.record_events(result.events)
        return result

    async def get_active_run(self, user_id: uuid.UUID, ctx: CallContext) -> ActiveRun:
        with self._telemetry.timed("GetActiveRun"):
            zone, run = await self._repo.get_active(user_id, ctx.deadline)
        current, streak = rules.current_streak(run, zone, self._clock.now())
        return ActiveRun(run=run, current=current, current_streak_days=streak,
                         time_zone=zone or "")

    async def list_runs(self, cmd: ListRuns, ctx: CallContext) -> RunPage:
        with self._telemetry.timed("ListRuns"):
            rows = await self._repo.list_runs(cmd.user_id, cmd.before_end_date,
                                              cmd.page_size + 1, ctx.deadline)
        page = rows[: cmd.page_size]
        token = ""
        if len(rows) > cmd.page_size and page:
            token = rules.encode_page_token(cmd.user_id, page[-1].end_date)
        return RunPage(runs=tuple(page), next_page_token=token)
