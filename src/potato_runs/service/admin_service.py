"""Operator use cases: rebuild (one user or all) and invariant checks."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from potato_runs.clock import Clock
from potato_runs.domain.errors import DomainError, Reason, ValidationCollector
from potato_runs.domain.runs import RebuildPlan
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository, Violation


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


class AdminService:
    def __init__(self, repo: AdminRepository, clock: Clock, telemetry: Telemetry) -> None:
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry

    async def rebuild_user(self, user_id: uuid.UUID, from_date: dt.date | None,
                           to_date: dt.date | None, dry_run: bool,
                           request_id: str | None = None, timeout: float = 60.0) -> RebuildPlan:
        if from_date and to_date and from_date > to_date:
            errors = ValidationCollector()
            errors.add("to_date", Reason.INVALID_RANGE, "to_date is before from_date")
            errors.raise_if_any()
        with self._telemetry.write_span("RebuildUserRuns", user_id):
            plan = await self._repo.rebuild_user(user_id, from_date, to_date, dry_run,
                                                 self._clock.now(), request_id, timeout)
        if not dry_run:
            self._telemetry.record_rebuild(plan)
        return plan

    async def rebuild_all(self, *, batch: int = 500, dry_run: bool = False, force: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> RebuildAllReport:
        """Set-based drift detection per batch of users, then one short locked
        transaction per drifted user (users are never locked together).
        With force, every user is replayed, drifted or not."""
        report = RebuildAllReport(dry_run=dry_run)
        started = time.perf_counter()
        after: uuid.UUID | None = None   # no cursor yet: the nil UUID is a user id too
        while True:
            if force:
                users = await self._repo.user_ids(after, batch)
                last, size, todo = (users[-1] if users else None), len(users), users
            else:
                last, size, todo = await self._repo.drifted_users(after, batch)
            if size == 0 or last is None:
                break
            report.users_scanned += size
            for user_id in todo:
                try:
                    plan = await self.rebuild_user(user_id, None, None, dry_run)
                except DomainError as exc:   # one user's failure does not stop the run
                    report.failed.append((user_id, str(exc)))
                    continue
                if not plan.diff.empty:
                    report.users_drifted += 1
                    report.drifted.append(user_id)
                    report.runs_added += len(plan.diff.added)
                    report.runs_removed += len(plan.diff.removed)
                    report.runs_changed += len(plan.diff.changed)
                    if not dry_run:
                        report.users_rebuilt += 1
            if progress:
                progress(size, report.users_drifted)
            after = last
        report.seconds = time.perf_counter() - started
        return report

    async def check(self, user_id: uuid.UUID | None, limit: int = 1000,
                    timeout: float = 600.0) -> tuple[list[Violation], bool]:
        violations, truncated = await self._repo.check(user_id, limit, timeout=timeout)
        self._telemetry.record_violations(len(violations))
        return violations, truncated

    async def count_users(self) -> int:
        return await self._repo.count_users()
