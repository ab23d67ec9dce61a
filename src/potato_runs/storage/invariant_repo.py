"""The invariant monitor's storage: one pass at a time across replicas (a session advisory
lock), the users touched since an earlier pass (run_events_event_id), the open
violations (invariant_violations) and every pass's result (invariant_check_runs), which
every replica reads to set its health.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.storage.admin_repo import INVARIANT_QUERIES, invariant_sql
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.pool import acquire

LOCK_KEYS = (0x506F7461, 0x496E7631)
"""pg_try_advisory_lock(int, int) keys of the monitor ('Pota', 'Inv1'). The two-key space
never meets the one-key space of the per-user write locks and the migration lock."""

_RECORD_COLUMNS = """pass_id, scope, replica, started_at, finished_at, after_event_id,
                     high_event_id, users_checked, violations, error"""


@dataclass(frozen=True)
class PassRecord:
    """One stored pass (a row of invariant_check_runs)."""

    pass_id: int
    scope: str
    """'full' or 'incremental'."""
    replica: str
    started_at: dt.datetime
    finished_at: dt.datetime
    after_event_id: int | None
    high_event_id: int
    users_checked: int
    violations: dict[str, int] = field(default_factory=dict)
    """Open violations after the pass, by invariant code (codes with none are absent)."""
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.violations.values())


def _record(row: asyncpg.Record) -> PassRecord:
    raw: Any = row["violations"]
    counts = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    return PassRecord(pass_id=row["pass_id"], scope=row["scope"], replica=row["replica"],
                      started_at=row["started_at"], finished_at=row["finished_at"],
                      after_event_id=row["after_event_id"],
                      high_event_id=row["high_event_id"], users_checked=row["users_checked"],
                      violations={str(k): int(v) for k, v in counts.items()},
                      error=row["error"])


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Database failures as domain errors (the service layer knows no asyncpg)."""
    try:
        yield
    except DB_FAILURES as exc:
        raise map_db_error(exc) from exc


class _Mapped:
    """A connection whose failures are domain errors (the service layer knows no asyncpg)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any, timeout: float) -> list[asyncpg.Record]:
        with _mapped():
            return list(await self._conn.fetch(sql, *args, timeout=timeout))

    async def fetchrow(self, sql: str, *args: Any, timeout: float) -> asyncpg.Record | None:
        with _mapped():
            return await self._conn.fetchrow(sql, *args, timeout=timeout)

    async def fetchval(self, sql: str, *args: Any, timeout: float) -> Any:
        with _mapped():
            return await self._conn.fetchval(sql, *args, timeout=timeout)

    async def execute(self, sql: str, *args: Any, timeout: float) -> str:
        with _mapped():
            return str(await self._conn.execute(sql, *args, timeout=timeout))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with _mapped():
            async with self._conn.transaction():
                yield


async def _latest(conn: asyncpg.Connection | _Mapped, timeout: float) -> PassRecord | None:
    row = await conn.fetchrow(f"SELECT {_RECORD_COLUMNS} FROM invariant_check_runs "
                              "ORDER BY pass_id DESC LIMIT 1", timeout=timeout)
    return _record(row) if row is not None else None


class MonitorSession:
    """The connection that holds the monitor's lock: what one pass reads and writes."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = _Mapped(conn)

    async def latest(self, timeout: float = 30.0) -> PassRecord | None:
        return await _latest(self._conn, timeout)

    async def latest_full(self, timeout: float = 30.0) -> PassRecord | None:
        row = await self._conn.fetchrow(
            f"SELECT {_RECORD_COLUMNS} FROM invariant_check_runs "
            "WHERE scope = 'full' AND error IS NULL ORDER BY pass_id DESC LIMIT 1",
            timeout=timeout)
        return _record(row) if row is not None else None

    async def incremental_base(self, grace: dt.timedelta, timeout: float = 30.0) -> int | None:
        """The event id after which an incremental pass must look, or None (no usable
        pass: run a full one).

        An event's id is taken when its write inserts it, and the write commits a little
        later, so ids do not become visible in order: a pass may see 101 while 100 is still
        uncommitted. The base is therefore the high_event_id of the latest successful pass
        that finished at least `grace` (longer than any write transaction) before the
        latest successful pass started: every event at or below it was allocated before
        that pass finished, so committed before the latest pass began, which saw and
        checked it (or an earlier pass did). Events are looked at in more than one pass;
        none is missed."""
        base = await self._conn.fetchval(
            """SELECT max(high_event_id) FROM invariant_check_runs
                WHERE error IS NULL
                  AND finished_at + $1::interval <= (SELECT max(started_at)
                                                       FROM invariant_check_runs
                                                      WHERE error IS NULL)""",
            grace, timeout=timeout)
        return int(base) if base is not None else None

    async def high_event_id(self, timeout: float = 30.0) -> int:
        return int(await self._conn.fetchval(
            "SELECT coalesce(max(event_id), 0) FROM run_events", timeout=timeout))

    async def touched_users(self, after: int,
                            timeout: float = 60.0) -> tuple[int, list[uuid.UUID]]:
        """(the highest event id seen, the users of the events after `after` and the users
        with open violations), in one statement: a range scan of run_events_event_id (0012)."""
        row = await self._conn.fetchrow(
            """WITH ev AS MATERIALIZED (SELECT event_id, user_id FROM run_events
                                          WHERE event_id > $1)
               SELECT (SELECT coalesce(max(event_id), $1) FROM ev) AS high,
                      ARRAY(SELECT user_id FROM ev
                            UNION
                            SELECT user_id FROM invariant_violations) AS users""",
            after, timeout=timeout)
        assert row is not None
        return int(row["high"]), list(row["users"])

    async def count_users(self, timeout: float = 60.0) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM users", timeout=timeout))

    async def check(self, users: list[uuid.UUID] | None, now: dt.datetime,
                    deadline: Deadline) -> dict[str, int]:
        """Runs every invariant query for `users` (None: everyone) and replaces their rows
        of invariant_violations with what it found, one transaction per invariant; returns
        the open violations of everyone by code. Set-based: the violations go from the
        query into the table on the server, none travels to the client."""
        for code in INVARIANT_QUERIES:
            async with self._conn.transaction():
                # Per-user index scans; JIT would compile for the estimates of everyone.
                await self._conn.execute("SET LOCAL jit = off", timeout=deadline.timeout())
                if users is None:
                    await self._conn.execute(
                        "DELETE FROM invariant_violations WHERE code = $1", code,
                        timeout=deadline.timeout())
                    await self._conn.execute(
                        f"""INSERT INTO invariant_violations (user_id, code, detail, found_at)
                            SELECT v.user_id, $1, v.detail, $2
                              FROM ({invariant_sql(code, False)}) AS v(user_id, detail)""",
                        code, now, timeout=deadline.timeout())
                else:
                    await self._conn.execute(
                        "DELETE FROM invariant_violations WHERE code = $2 "
                        "AND user_id = ANY($1::uuid[])", users, code,
                        timeout=deadline.timeout())
                    await self._conn.execute(
                        f"""INSERT INTO invariant_violations (user_id, code, detail, found_at)
                            SELECT v.user_id, $2, v.detail, $3
                              FROM ({invariant_sql(code, False, some_users=True)})
                                   AS v(user_id, detail)""",
                        users, code, now, timeout=deadline.timeout())
        rows = await self._conn.fetch(
            "SELECT code, count(*) AS n FROM invariant_violations GROUP BY code",
            timeout=deadline.timeout())
        return {r["code"]: int(r["n"]) for r in rows}

    async def examples(self, limit: int, timeout: float = 30.0) -> list[tuple[str, uuid.UUID, str]]:
        rows = await self._conn.fetch(
            "SELECT code, user_id, detail FROM invariant_violations ORDER BY code, user_id "
            "LIMIT $1", limit, timeout=timeout)
        return [(r["code"], r["user_id"], r["detail"]) for r in rows]

    async def record(self, *, scope: str, replica: str, started_at: dt.datetime,
                     finished_at: dt.datetime, after_event_id: int | None, high_event_id: int,
                     users_checked: int, violations: dict[str, int], error: str | None,
                     timeout: float = 30.0) -> PassRecord:
        row = await self._conn.fetchrow(
            f"""INSERT INTO invariant_check_runs (scope, replica, started_at, finished_at,
                    after_event_id, high_event_id, users_checked, violations, error)
                VALUES ($1, $2, $3::timestamptz, greatest($4::timestamptz, $3::timestamptz),
                        $5, $6, $7, $8::jsonb, $9)
                RETURNING {_RECORD_COLUMNS}""",
            scope, replica, started_at, finished_at, after_event_id, high_event_id,
            users_checked, violations, error, timeout=timeout)
        assert row is not None
        return _record(row)

    async def purge(self, before: dt.datetime, timeout: float = 30.0) -> int:
        """Deletes passes that started before `before`, except the latest successful one."""
        status = await self._conn.execute(
            """DELETE FROM invariant_check_runs
                WHERE started_at < $1
                  AND pass_id <> (SELECT coalesce(max(pass_id), 0) FROM invariant_check_runs
                                   WHERE error IS NULL)""", before, timeout=timeout)
        return int(status.split()[-1])


class InvariantChecksRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def latest(self, timeout: float = 10.0) -> PassRecord | None:
        """The latest stored pass: what every replica's health follows."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                return await _latest(conn, budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc

    @contextlib.asynccontextmanager
    async def exclusive(self, timeout: float = 10.0) -> AsyncIterator[MonitorSession | None]:
        """The monitor's lock, on a connection held for the pass: yields a session, or
        None at once when another replica (or process) holds it. A session lock, not a
        transaction's: the pass commits invariant by invariant. Released at the end; a
        connection that broke is terminated by `acquire`, which ends its lock too."""
        try:
            async with acquire(self._pool, timeout=timeout) as conn:
                got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *LOCK_KEYS,
                                          timeout=timeout)
                if not got:
                    yield None
                    return
                try:
                    yield MonitorSession(conn)
                finally:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *LOCK_KEYS,
                                           timeout=timeout)
                    except BaseException:
                        # The pool would hand the connection out still holding the lock.
                        conn.terminate()
                        raise
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
