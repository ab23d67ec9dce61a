"""`SELECT 1` on a connection of its own: whether the database answers, for health.

Not on the serving pool: under load a ping there would queue behind the callers for a
connection and time out while the database is fine, turning a busy replica NOT_SERVING.
One persistent session (`application_name` potato-runs-health) makes a ping one round
trip; after the database restarted, or the session was terminated, the next ping opens a
fresh one within the same time budget.
"""

from __future__ import annotations

import time

import asyncpg

from potato_runs.storage.errors import DB_FAILURES, map_db_error

APPLICATION_NAME = "potato-runs-health"


class HealthPing:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def __call__(self, timeout: float) -> bool:
        """True when the database answered within `timeout` seconds; otherwise raises
        the mapped DomainError (DATABASE_UNAVAILABLE, DEADLINE_EXCEEDED), which says why."""
        end = time.monotonic() + timeout
        while True:
            fresh = self._conn is None or self._conn.is_closed()
            try:
                if fresh:
                    self._drop()
                    self._conn = await asyncpg.connect(
                        self._dsn, timeout=max(0.001, end - time.monotonic()),
                        server_settings={"application_name": APPLICATION_NAME})
                assert self._conn is not None
                value = await self._conn.fetchval(
                    "SELECT 1", timeout=max(0.001, end - time.monotonic()))
                return bool(value == 1)
            except DB_FAILURES as exc:
                self._drop()
                if fresh or time.monotonic() >= end:
                    raise map_db_error(exc) from exc
                # an old session failed (terminated, or the server restarted): one more
                # try on a fresh one decides

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        self._drop()
