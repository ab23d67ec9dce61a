"""Deletes AIP-155 request ids older than the retention (Settings.request_id_retention,
24 h by default), in small batches, periodically."""

from __future__ import annotations

import datetime as dt
import logging

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.service.periodic import Periodic
from potato_runs.storage.request_ids_repo import RequestIdsRepository

log = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0
"""Seconds between purge rounds."""
BATCH_SIZE = 1000
"""Ids deleted per statement (one short transaction each)."""
MAX_BATCHES = 50
"""Batches per round at most: a backlog is worked off over several rounds, so one round
never holds an admin-pool connection for long."""
BATCH_TIMEOUT = 30.0
"""Seconds one batch may take."""


class RequestIdPurge(Periodic):
    """Every `interval` seconds, deletes the ids recorded before now - `retention`
    (the clock is the service's, the same one that stamps `created_at`), batch by batch,
    until a batch comes back short or MAX_BATCHES were deleted.

    Safe to run in every replica, with no coordination: a batch is one DELETE of old
    rows only, so two replicas purging at once delete each row once (the second
    waits for the first's row locks, then finds the rows gone and skips them) and
    neither can delete a live id. It never takes a user's advisory lock and never
    blocks a write: a write records a new id (created_at = now, never old enough to be
    purged), and a retry that finds its id just before the purge deletes it replays it;
    one arriving just after runs as a new request, as any retry after the retention
    does. Runs on the admin pool, so it cannot take the connections that serve calls.
    """

    name = "request-id-purge"

    def __init__(self, repo: RequestIdsRepository, clock: Clock, retention: float,
                 interval: float = PURGE_INTERVAL, batch_size: int = BATCH_SIZE,
                 max_batches: int = MAX_BATCHES) -> None:
        super().__init__(interval)
        self._repo = repo
        self._clock = clock
        self._retention = dt.timedelta(seconds=retention)
        self._batch_size = batch_size
        self._max_batches = max_batches

    async def purge_once(self) -> int:
        """One round; returns how many ids it deleted."""
        cutoff = self._clock.now() - self._retention
        deleted = 0
        for _ in range(self._max_batches):
            n = await self._repo.purge_batch(cutoff, self._batch_size,
                                             Deadline.after(BATCH_TIMEOUT))
            deleted += n
            if n < self._batch_size:
                break
        if deleted:
            log.info("purged %d request ids recorded before %s", deleted, cutoff.isoformat())
        return deleted

    async def round(self) -> None:
        await self.purge_once()

    def on_failure(self) -> None:
        """Nothing to report: the next round deletes what this one left."""
