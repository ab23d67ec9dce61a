"""Runs the invariant checker periodically and reports the outcome (to health)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from potato_runs.domain.errors import DomainError
from potato_runs.service.admin_service import AdminService
from potato_runs.service.periodic import Periodic

log = logging.getLogger(__name__)


class InvariantMonitor(Periodic):
    """Every `interval` seconds: check everyone; report (ok, violations found).

    ok is None when the check itself could not run (e.g. the database is down):
    the invariants are then unknown, not broken.
    """

    name = "invariant-monitor"

    def __init__(self, admin: AdminService, interval: float,
                 report: Callable[[bool | None, int], None], limit: int = 100) -> None:
        super().__init__(interval)
        self._admin = admin
        self._report = report
        self._limit = limit

    async def check_once(self) -> int:
        try:
            violations, _ = await self._admin.check(None, self._limit)
        except DomainError as exc:
            log.warning("invariant check could not run: %s", exc)
            self._report(None, -1)
            return -1
        if violations:
            log.error("invariant check found %d violation(s); first: %s %s %s",
                      len(violations), violations[0].code, violations[0].user_id,
                      violations[0].detail)
        self._report(not violations, len(violations))
        return len(violations)

    async def round(self) -> None:
        await self.check_once()

    def on_failure(self) -> None:
        self._report(None, -1)
