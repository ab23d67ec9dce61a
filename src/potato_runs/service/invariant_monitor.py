"""Runs the invariant checker periodically and reports the outcome (to health)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from potato_runs.domain.errors import DomainError
from potato_runs.service.admin_service import AdminService

log = logging.getLogger(__name__)


class InvariantMonitor:
    """Every `interval` seconds: check everyone; report (ok, violations found).

    ok is None when the check itself could not run (e.g. the database is down):
    the invariants are then unknown, not broken.
    """

    def __init__(self, admin: AdminService, interval: float,
                 report: Callable[[bool | None, int], None], limit: int = 100) -> None:
        self._admin = admin
        self._interval = interval
        self._report = report
        self._limit = limit
        self._task: asyncio.Task[None] | None = None
        self.last_violations: int | None = None

    async def check_once(self) -> int:
        try:
            violations, _ = await self._admin.check(None, self._limit)
        except DomainError as exc:
            log.warning("invariant check could not run: %s", exc)
            self._report(None, -1)
            return -1
        self.last_violations = len(violations)
        if violations:
            log.error("invariant check found %d violation(s); first: %s %s %s",
                      len(violations), violations[0].code, violations[0].user_id,
                      violations[0].detail)
        self._report(not violations, len(violations))
        return len(violations)

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # keep monitoring whatever one round did
                log.exception("invariant check failed")
                self._report(None, -1)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="invariant-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
