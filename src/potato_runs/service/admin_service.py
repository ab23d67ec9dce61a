"""Operator use cases: rebuild (one user or all), invariant checks, the population diff
and the online shadow statistics."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.domain import rules
from potato_runs.domain.errors import DomainError, Reason, ValidationCollector
from potato_runs.domain.rollout import SHADOW_WINDOW_HOURS, DiffBatch, PopulationDiff, ShadowStats
from potato_runs.domain.runs import RebuildPlan
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository, Violation

BATCH_TIMEOUT = 600.0
"""Seconds one batch of an offline loop (rebuild_all, diff_population) may take."""
USER_REBUILD_TIMEOUT = 60.0
"""Seconds one user's rebuild may take within a batch."""


@dataclass
class RebuildAllReport:
    users_scanned: int = 0
    users_drifted: int = 0
    users_rebuilt: int = 0
    runs_added: int = 0
    runs_removed: int = 0
    runs_changed: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    drifted: list[uuid.UUID] = field(default_factory=list)
    failed: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    """Users whose rebuild failed (e.g. their lock was busy); the run went on."""

    def add(self, step: RebuildBatch) -> None:
        self.users_scanned += step.users_scanned
        self.failed.extend(step.failed)
        for user_id, plan in step.drifted:
            self.users_drifted += 1
            self.drifted.append(user_id)
            self.runs_added += len(plan.diff.added)
            self.runs_removed += len(plan.diff.removed)
            self.runs_changed += len(plan.diff.changed)
            if not self.dry_run:
                self.users_rebuilt += 1


@dataclass(frozen=True)
class RebuildBatch:
    """One batch of a rebuild over everyone (user_id order)."""

    users_scanned: int
    last_user: uuid.UUID | None
    """The cursor for the next batch; None when the batch was empty."""
    drifted: tuple[tuple[uuid.UUID, RebuildPlan], ...]
    """Users whose runs differed from the facts, with what was (or would be) changed."""
    failed: tuple[tuple[uuid.UUID, str], ...]
    """Users that could not be rebuilt (e.g. their lock stayed busy)."""


class AdminService:
    def __init__(self, repo: AdminRepository, clock: Clock, telemetry: Telemetry) -> None:
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry

    async def rebuild_user(self, user_id: uuid.UUID, from_date: dt.date | None,
                           to_date: dt.date | None, dry_run: bool,
                           request_id: str | None = None, timeout: float = 60.0) -> RebuildPlan:
        errors = ValidationCollector()
        rules.check_admin_range(from_date, to_date, errors)
        errors.raise_if_any()
        started = time.perf_counter()
        with self._telemetry.operator_span("RebuildUserRuns", user_id):
            try:
                plan = await self._repo.rebuild_user(user_id, from_date, to_date, dry_run,
                                                     self._clock.now(), request_id, timeout)
            except BaseException:
                self._telemetry.record_rebuild_failure()
                raise
        if not dry_run:
            self._telemetry.record_rebuild(plan)
            self._telemetry.record_rebuild_duration(time.perf_counter() - started, "user")
        return plan

    async def rebuild_batch(self, after: uuid.UUID | None, batch: int, *, dry_run: bool = False,
                            force: bool = False, timeout: float = 300.0,
                            request_id: str | None = None) -> RebuildBatch:
        """One batch of users after `after` (user_id order): set-based drift detection,
        then one short locked transaction per drifted user (users are never locked
        together). With force, every user of the batch is replayed, drifted or not.
        A user that cannot be rebuilt (e.g. its lock stays busy) is listed in `failed`
        and the batch goes on; running out of `timeout` fails the whole batch."""
        budget = Deadline.after(timeout)
        started = time.perf_counter()
        try:
            if force:
                users = await self._repo.user_ids(after, batch, timeout=budget.timeout())
                last, size, todo = (users[-1] if users else None), len(users), users
            else:
                last, size, todo = await self._repo.drifted_users(after, batch,
                                                                  timeout=budget.timeout())
        except BaseException:
            self._telemetry.record_rebuild_failure()
            raise
        drifted: list[tuple[uuid.UUID, RebuildPlan]] = []
        failed: list[tuple[uuid.UUID, str]] = []
        for user_id in todo:
            left = budget.timeout()   # out of time: the batch fails (retry it; rebuilds are idempotent)
            try:
                plan = await self.rebuild_user(user_id, None, None, dry_run, request_id,
                                               min(USER_REBUILD_TIMEOUT, left))
            except DomainError as exc:   # one user's failure does not stop the batch
                if exc.reason is Reason.DEADLINE_EXCEEDED and budget.remaining() <= 0:
                    raise
                failed.append((user_id, str(exc)))
                continue
            if not plan.diff.empty:
                drifted.append((user_id, plan))
        if not dry_run:
            self._telemetry.record_rebuild_duration(time.perf_counter() - started, "batch")
        return RebuildBatch(users_scanned=size, last_user=last, drifted=tuple(drifted),
                            failed=tuple(failed))

    async def rebuild_all(self, *, batch: int = 500, dry_run: bool = False, force: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> RebuildAllReport:
        """rebuild_batch over every user, batch after batch."""
        report = RebuildAllReport(dry_run=dry_run)
        started = time.perf_counter()
        after: uuid.UUID | None = None   # no cursor yet: the nil UUID is a user id too
        while True:
            step = await self.rebuild_batch(after, batch, dry_run=dry_run, force=force,
                                            timeout=BATCH_TIMEOUT)
            if step.users_scanned == 0 or step.last_user is None:
                break
            report.add(step)
            if progress:
                progress(step.users_scanned, report.users_drifted)
            after = step.last_user
        report.seconds = time.perf_counter() - started
        if not dry_run:
            self._telemetry.record_rebuild_duration(report.seconds, "all")
        return report

    async def diff_batch(self, after: uuid.UUID | None, batch: int,
                         timeout: float = 300.0) -> DiffBatch:
        """The population diff (legacy vs projection) of one batch of users, with the
        current streaks compared at the service clock's now."""
        return await self._repo.diff_batch(after, batch, self._clock.now(), timeout=timeout)

    async def diff_population(self, *, batch: int = 1000, sample: int | None = None,
                              progress: Callable[[DiffBatch], None] | None = None
                              ) -> PopulationDiff:
        """diff_batch over every user, or the first `sample` users in user_id order."""
        result = PopulationDiff(sample=sample)
        after: uuid.UUID | None = None
        while sample is None or result.users_scanned < sample:
            size = batch if sample is None else min(batch, sample - result.users_scanned)
            step = await self.diff_batch(after, size, timeout=BATCH_TIMEOUT)
            if step.users_scanned == 0 or step.last_user is None:
                break
            result.add(step)
            if progress:
                progress(step)
            after = step.last_user
        return result

    async def shadow_stats(self, flag: str, window_hours: int = SHADOW_WINDOW_HOURS,
                           timeout: float = 30.0) -> ShadowStats:
        return await self._repo.shadow_stats(flag, window_hours, self._clock.now(),
                                             timeout=timeout)

    async def check(self, user_id: uuid.UUID | None, limit: int = 1000,
                    timeout: float = 600.0) -> tuple[list[Violation], bool]:
        # potato.runs.invariant.violations comes from the invariant monitor's stored
        # passes alone (app.py), so every replica exports the same counts: an operator's
        # check does not set it.
        return await self._repo.check(user_id, limit, timeout=timeout)

    async def count_users(self, timeout: float = 60.0) -> int:
        return await self._repo.count_users(timeout=timeout)
