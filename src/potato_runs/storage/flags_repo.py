"""Feature flags in PostgreSQL: read them all, read one, change one with its audit row.

A change locks the flag's row (SELECT ... FOR UPDATE), applies a pure function to
the state it read, bumps `revision` and writes the `feature_flag_changes` row in
the same transaction; `potato_feature_flags` is NOTIFYd on commit (by the table's trigger
on one PostgreSQL, by update() after it on both).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from potato_runs.domain.flags import FlagState
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.pool import acquire

log = logging.getLogger(__name__)
NOTIFY_CHANNEL = "potato_feature_flags"

FLAG_COLUMNS = """name, enabled, rollout_basis_points, shadow_basis_points, allow_user_ids,
    deny_user_ids, revision, updated_at, updated_by, update_reason"""

Executor = Any
"""An asyncpg Pool or Connection."""


def flag_from_record(r: Any) -> FlagState:
    return FlagState(
        name=r["name"], enabled=r["enabled"],
        rollout_basis_points=r["rollout_basis_points"],
        shadow_basis_points=r["shadow_basis_points"],
        allow_user_ids=frozenset(r["allow_user_ids"] or ()),
        deny_user_ids=frozenset(r["deny_user_ids"] or ()),
        revision=r["revision"], updated_at=r["updated_at"], updated_by=r["updated_by"],
        update_reason=r["update_reason"])


def flag_json(f: FlagState) -> dict[str, Any]:
    """The audit shape (the same keys as migration 0003's first rows), ids sorted."""
    return {"enabled": f.enabled, "rollout_basis_points": f.rollout_basis_points,
            "shadow_basis_points": f.shadow_basis_points,
            "allow_user_ids": sorted(str(u) for u in f.allow_user_ids),
            "deny_user_ids": sorted(str(u) for u in f.deny_user_ids),
            "revision": f.revision}


async def load_flags(executor: Executor, timeout: float | None = None) -> dict[str, FlagState]:
    """Every flag, by name (one query; raises the driver's errors)."""
    rows = await executor.fetch(f"SELECT {FLAG_COLUMNS} FROM feature_flags ORDER BY name",
                                timeout=timeout)
    return {r["name"]: flag_from_record(r) for r in rows}


class FlagsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load_all(self, timeout: float | None = None) -> dict[str, FlagState]:
        try:
            return await load_flags(self._pool, timeout)
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc

    async def get(self, name: str, timeout: float | None = None) -> FlagState | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {FLAG_COLUMNS} FROM feature_flags WHERE name = $1", name,
                timeout=timeout)
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return None if row is None else flag_from_record(row)

    async def update(self, name: str, change: Callable[[FlagState], FlagState], *,
                     actor: str, reason: str, now: dt.datetime,
                     timeout: float | None = None) -> FlagState | None:
        """Applies `change` to the locked current state and stores the result with an
        audit row, in one transaction. None when there is no such flag. `change` may
        raise (e.g. a DomainError for a merged state that is invalid): nothing is
        written then."""
        try:
            async with acquire(self._pool, timeout=timeout) as conn:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        f"SELECT {FLAG_COLUMNS} FROM feature_flags WHERE name = $1 FOR UPDATE",
                        name, timeout=timeout)
                    if row is None:
                        return None
                    before = flag_from_record(row)
                    wanted = change(before)
                    row = await conn.fetchrow(
                        f"""UPDATE feature_flags
                               SET enabled = $2, rollout_basis_points = $3,
                                   shadow_basis_points = $4, allow_user_ids = $5::uuid[],
                                   deny_user_ids = $6::uuid[], revision = revision + 1,
                                   updated_at = $7, updated_by = $8, update_reason = $9
                             WHERE name = $1
                         RETURNING {FLAG_COLUMNS}""",
                        name, wanted.enabled, wanted.rollout_basis_points,
                        wanted.shadow_basis_points, _sorted(wanted.allow_user_ids),
                        _sorted(wanted.deny_user_ids), now, actor, reason, timeout=timeout)
                    after = flag_from_record(row)
                    await conn.execute(
                        """INSERT INTO feature_flag_changes
                               (name, changed_at, changed_by, reason, before, after)
                           VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)""",
                        name, now, actor, reason, flag_json(before), flag_json(after),
                        timeout=timeout)   # the pool's jsonb codec encodes the dicts
                # After the commit, outside it: on Citus feature_flags is a reference
                # table, written with two-phase commit, which refuses a transaction that
                # NOTIFYs, so there is no trigger (storage/citus.py). On one PostgreSQL
                # the trigger has notified too: a second reload changes nothing. Best
                # effort: the change is committed, so a failed NOTIFY must not report
                # it failed; the other replicas then see it at their next reload.
                try:
                    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, name,
                                       timeout=timeout)
                except DB_FAILURES as exc:
                    log.warning("feature flag %s changed; its NOTIFY failed (%s)", name,
                                type(exc).__name__)
                return after
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc


def _sorted(ids: frozenset[uuid.UUID]) -> list[uuid.UUID]:
    return sorted(ids, key=str)
