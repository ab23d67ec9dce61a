"""Retention: rows older than a retention period deleted periodically, in small batches.

One job shape for every table with a retention (AIP-155 request ids, run events): the
table's repository deletes one batch (`purge_batch`), this loop decides how many."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.service.periodic import Periodic

log = logging.getLogger(__name__)

PurgeBatch = Callable[[dt.datetime, int, Deadline], Awaitable[int]]
"""(older_than, limit, deadline) -> rows deleted, in one short transaction."""

BATCH_SIZE = 1000
"""Rows deleted per statement (one short transaction each)."""
MAX_BATCHES = 50
"""Batches per round at most: a backlog is worked off over several rounds, so one round
never holds an admin-pool connection for long."""
BATCH_TIMEOUT = 30.0
"""Seconds one batch may take."""


class RetentionPurge(Periodic):
    """Every `interval` seconds, deletes the rows recorded before now - `retention` (the
    clock is the service's, the one that stamps the rows), batch by batch, until a batch
    comes back short or `max_batches` were deleted.

    Safe to run in every replica, with no coordination, as long as a batch deletes old
    rows only: two replicas purging at once delete each row once (the second waits for
    the first's row locks, then finds the rows gone and skips them). It never takes a
    user's advisory lock nor blocks a write (writes insert new rows, never old enough to
    be purged). Runs on the admin pool, so it cannot take the connections that serve
    calls. A failed round reports nothing: the next one deletes what it left."""

    def __init__(self, name: str, what: str, purge_batch: PurgeBatch, clock: Clock,
                 retention: float, interval: float, *, batch_size: int = BATCH_SIZE,
                 max_batches: int = MAX_BATCHES) -> None:
        super().__init__(interval)
        self.name = name
        self._what = what
        self._purge_batch = purge_batch
        self._clock = clock
        self._retention = dt.timedelta(seconds=retention)
        self._batch_size = batch_size
        self._max_batches = max_batches

    async def purge_once(self) -> int:
        """One round; returns how many rows it deleted."""
        cutoff = self._clock.now() - self._retention
        deleted = 0
        for _ in range(self._max_batches):
            n = await self._purge_batch(cutoff, self._batch_size, Deadline.after(BATCH_TIMEOUT))
            deleted += n
            if n < self._batch_size:
                break
        if deleted:
            log.info("purged %d %s recorded before %s", deleted, self._what,
                     cutoff.isoformat())
        return deleted

    async def round(self) -> None:
        await self.purge_once()

    def on_failure(self) -> None:
        """Nothing to report: the next round deletes what this one left."""
