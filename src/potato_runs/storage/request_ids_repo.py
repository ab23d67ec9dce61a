"""The request_ids table (AIP-155 request ids of writes, migration 0007): its purge.

Looking ids up and recording them is part of each write's statement (runs_repo.py,
the potato_*_once functions), not of this repository."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.storage import db_call
from potato_runs.storage.db_call import RetryPolicy

# By primary key, not ctid: the table is to be distributed by user_id (Citus), where a
# ctid names a row of one shard only. The sub-select reads request_ids_created_at.
PURGE_BATCH_SQL = """
DELETE FROM request_ids
 WHERE (user_id, request_id) IN (SELECT user_id, request_id FROM request_ids
                                  WHERE created_at < $1 LIMIT $2)
"""


class RequestIdsRepository:
    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None) -> None:
        self._pool = pool
        self._retry = retry or RetryPolicy()

    async def purge_batch(self, older_than: dt.datetime, limit: int,
                          deadline: Deadline) -> int:
        """Deletes at most `limit` ids recorded before `older_than` (one short
        transaction); returns how many it deleted. Never blocks a write: a write records
        a new id (never old enough), a retry that finds its id just before this deletes
        it replays it, and one just after runs as a new request, as any retry after the
        retention does (service/retention.py runs it)."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.execute(PURGE_BATCH_SQL, older_than, limit, timeout=timeout)

        status = await db_call.call(self._pool, self._retry, deadline, "request", op)
        return int(str(status).rsplit(" ", 1)[-1])

