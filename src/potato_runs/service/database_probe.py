"""Pings the database periodically so health reflects whether calls can succeed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from potato_runs.domain.errors import DomainError
from potato_runs.service.periodic import Periodic

log = logging.getLogger(__name__)


class DatabaseProbe(Periodic):
    """Every `interval` seconds: ping; report True (reachable) or False."""

    name = "database-probe"

    def __init__(self, ping: Callable[[], Awaitable[bool]], interval: float,
                 report: Callable[[bool], None]) -> None:
        super().__init__(interval)
        self._ping = ping
        self._report = report
        self.last: bool | None = None

    async def probe_once(self) -> bool:
        try:
            ok = await self._ping()
        except DomainError as exc:
            ok = False
            if self.last is not False:
                log.warning("database unreachable: %s", exc)
        if ok and self.last is False:
            log.info("database reachable again")
        self.last = ok
        self._report(ok)
        return ok

    async def round(self) -> None:
        await self.probe_once()

    def on_failure(self) -> None:
        self._report(False)
