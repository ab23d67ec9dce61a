"""Shadow comparison records: hourly counts and the capped mismatch store."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.storage import db_call
from potato_runs.storage.db_call import RetryPolicy


@dataclass(frozen=True)
class CountKey:
    flag: str
    method: str
    result: str      # match | mismatch | dropped | error
    hour: dt.datetime


@dataclass(frozen=True)
class Mismatch:
    user_id: uuid.UUID
    flag: str
    method: str
    legacy: Mapping[str, Any]
    projection: Mapping[str, Any]
    observed_at: dt.datetime


# One statement per flush: add the counts, insert the mismatches and delete the
# oldest mismatches beyond the cap. The DELETE sees the table as it was before this
# statement (one snapshot), so it keeps the newest (cap - inserted) older rows.
_FLUSH = """
    WITH counts AS (
        INSERT INTO shadow_comparisons AS s (flag, method, result, hour, count)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                             $5::bigint[])
        ON CONFLICT (flag, method, result, hour)
        DO UPDATE SET count = s.count + EXCLUDED.count
        RETURNING 1),
    ins AS (
        INSERT INTO shadow_mismatches (user_id, flag, method, legacy, projection, observed_at)
        -- the answers travel as text[] (the pool's jsonb codec is for single values)
        SELECT * FROM unnest($6::uuid[], $7::text[], $8::text[], $9::text[]::jsonb[],
                             $10::text[]::jsonb[], $11::timestamptz[])
        RETURNING 1),
    del AS (
        DELETE FROM shadow_mismatches
         WHERE cardinality($6::uuid[]) > 0
           AND mismatch_id IN (SELECT mismatch_id FROM shadow_mismatches
                                ORDER BY mismatch_id DESC
                                OFFSET greatest($12::int - cardinality($6::uuid[]), 0))
        RETURNING 1)
    SELECT (SELECT count(*) FROM counts), (SELECT count(*) FROM ins),
           (SELECT count(*) FROM del)"""


class ShadowRepository:
    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None) -> None:
        self._pool = pool
        self._retry = retry or RetryPolicy()

    async def flush(self, counts: Mapping[CountKey, int], mismatches: Sequence[Mismatch],
                    cap: int, deadline: Deadline) -> None:
        """Adds `counts` and stores `mismatches` (the newest `cap` of them), keeping at
        most `cap` mismatch rows: one statement."""
        keys = list(counts)
        kept = list(mismatches)[-cap:] if cap > 0 else []
        args = (
            [k.flag for k in keys], [k.method for k in keys], [k.result for k in keys],
            [k.hour for k in keys], [counts[k] for k in keys],
            [m.user_id for m in kept], [m.flag for m in kept], [m.method for m in kept],
            [json.dumps(m.legacy) for m in kept], [json.dumps(m.projection) for m in kept],
            [m.observed_at for m in kept], cap)

        async def op(conn: asyncpg.Connection, timeout: float) -> None:
            await conn.fetchrow(_FLUSH, *args, timeout=timeout)

        await db_call.call(self._pool, self._retry, deadline, "request", op)
