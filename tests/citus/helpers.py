"""Helpers of the Citus tier: where a user's shard group lives, and what each worker
stores of a user (read from its shards directly, not through the distributed tables)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg

USER_TABLES = ("users", "daily_checkins", "runs", "run_events")
"""The tables whose shards every write of a user touches."""


def node_dsn(dsn: str, port: int) -> str:
    """`dsn` (the coordinator's) pointed at the node listening on `port`."""
    return dsn.replace(dsn.split("@")[1].split("/")[0], f"127.0.0.1:{port}")


async def placement(db: asyncpg.Connection, user: str | uuid.UUID) -> int:
    """The port of the worker that holds the user's shard group."""
    return int(await db.fetchval(
        """SELECT nodeport FROM citus_shards
            WHERE table_name = 'runs'::regclass
              AND shardid = get_shard_id_for_distribution_column('runs', $1::uuid)""",
        uuid.UUID(str(user))))


async def rows_on(port: int, dsn: str, user: str) -> int:
    """The user's runs rows stored on the node at `port` (its shards, read directly)."""
    return (await rows_by_user_on(port, dsn, [uuid.UUID(user)], ("runs",))).get(
        uuid.UUID(user), 0)


async def rows_by_user_on(port: int, dsn: str, users: Iterable[uuid.UUID],
                          tables: Iterable[str] = USER_TABLES) -> dict[uuid.UUID, int]:
    """Rows of `users` in the shards of `tables` stored on the node at `port`, by user
    (users with none are left out)."""
    wanted = list(users)
    conn = await asyncpg.connect(node_dsn(dsn, port))
    try:
        await conn.execute("SET citus.override_table_visibility = off")
        out: dict[uuid.UUID, int] = {}
        for table in tables:
            shards = [r[0] for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relname ~ ('^' || $1 || '_[0-9]+$') "
                "AND relkind = 'r'", table)]
            for shard in shards:
                for user, n in await conn.fetch(
                        f"SELECT user_id, count(*) FROM {shard} "
                        "WHERE user_id = ANY($1::uuid[]) GROUP BY user_id", wanted):
                    out[user] = out.get(user, 0) + int(n)
        return out
    finally:
        await conn.close()


async def homes(db: asyncpg.Connection, dsn: str, ports: Iterable[int],
                users: Iterable[uuid.UUID]) -> dict[uuid.UUID, set[int]]:
    """For every user, the nodes whose shards hold any of its rows (of USER_TABLES)."""
    wanted = list(users)
    found: dict[uuid.UUID, set[int]] = {u: set() for u in wanted}
    for port in ports:
        for user in await rows_by_user_on(port, dsn, wanted):
            found[user].add(port)
    return found


async def worker_backend(worker: asyncpg.Connection, coordinator_session: asyncpg.Connection
                         ) -> int | None:
    """The pid of the worker backend that serves `coordinator_session`'s distributed work
    (Citus names it by the session's global pid), or None when there is none."""
    gpid = await coordinator_session.fetchval("SELECT citus_backend_gpid()")
    pid = await worker.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid LIMIT 1",
        f"citus_internal gpid={gpid}")
    return None if pid is None else int(pid)
