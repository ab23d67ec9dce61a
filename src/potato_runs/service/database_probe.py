"""Pings the database periodically so health reflects whether calls can succeed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from potato_runs.domain.errors import DomainError

log = logging.getLogger(__name__)


class DatabaseProbe:
    """Every `interval` seconds: ping; report True (reachable) or False."""

    def __init__(self, ping: Callable[[], Awaitable[bool]], interval: float,
                 report: Callable[[bool], None]) -> None:
        self._ping = ping
        self._interval = interval
        self._report = report
        self._task: asyncio.Task[None] | None = None
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

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # keep probing whatever one round did
                log.exception("database probe failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="database-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
