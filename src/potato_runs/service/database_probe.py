"""Database health: whether calls can succeed, seen by the calls themselves and a probe.

The serving health status must follow the database within a second, not a probe interval
later: a replica whose database is gone should leave the load balancer's rotation at
once, and come back as soon as the database answers again. So the request path feeds it
(`storage/db_call.py` calls `succeeded()` and `connection_failed()`):

- a call that succeeded proves the database answers: up, at once;
- a call that failed at the connection level (DATABASE_UNAVAILABLE) makes the probe
  ping now, on a session of its own (`storage/health_ping.py`), and that ping decides.
  One killed backend (`pg_terminate_backend`, a restarted pooler) then costs a ping, not
  a flap to NOT_SERVING; a stopped database is NOT_SERVING within the ping's time. A
  slow query (DEADLINE_EXCEEDED) says nothing about the database being there, and
  counts for nothing;
- the probe pings every `interval` seconds while up (0: only when a call failed), and
  every `down_interval` (0.5 s) while down, whatever the traffic: a drained replica gets
  no calls, so only the probe can see the database come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from potato_runs.domain.errors import DomainError

log = logging.getLogger(__name__)

DOWN_INTERVAL = 0.5
"""Seconds between pings while the database does not answer."""


class DatabaseProbe:
    """Reports True (the database answers) or False to `report`, on every change."""

    name = "database-probe"

    def __init__(self, ping: Callable[[], Awaitable[bool]], interval: float,
                 report: Callable[[bool], None], *,
                 down_interval: float = DOWN_INTERVAL,
                 close: Callable[[], Awaitable[None]] | None = None) -> None:
        self._ping = ping
        self._close = close
        self._interval = interval
        self._down_interval = down_interval
        self._report = report
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last: bool | None = None

    # -- the request path (storage/db_call.py) ---------------------------------------
    def succeeded(self) -> None:
        """A call got its answer from the database."""
        if self.last is not True:
            self._set(True)

    def connection_failed(self) -> None:
        """A call lost its connection or could not get one: ping now."""
        self._wake.set()

    # -- the probe -------------------------------------------------------------------
    def _set(self, ok: bool) -> None:
        if ok and self.last is False:
            log.info("database reachable again")
        self.last = ok
        self._report(ok)

    async def probe_once(self) -> bool:
        try:
            ok = await self._ping()
        except DomainError as exc:
            ok = False
            if self.last is not False:
                log.warning("database unreachable: %s", exc)
        if ok != self.last:
            self._set(ok)
        return ok

    async def _loop(self) -> None:
        due = self._interval > 0   # with interval 0, the first ping waits for a failure
        while True:
            if due or self._wake.is_set():
                self._wake.clear()
                try:
                    await self.probe_once()
                except Exception:   # keep going whatever one ping did
                    log.exception("%s round failed", self.name)
                    if self.last is not False:
                        self._set(False)
            due = True
            if self.last is False:
                await asyncio.sleep(self._down_interval)   # the next ping; calls cannot
                continue                                     # hurry it (no ping storm)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval or None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._close is not None:
            await self._close()
