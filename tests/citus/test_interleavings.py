"""The scripted interleavings of tests/integration/test_interleavings.py on Citus.

What runs as on one PostgreSQL: the per-user lock does not hold up another user, the
checker sees a lockless write the constraints allow, and free races of a mark and an
unmark (each its own delegated call, serialized by the lock on the worker) end in one of
the two serial orders.

Skipped here, each with its reason below: the scripts whose holder takes the advisory lock
in a coordinator session (a delegated writer takes it on the worker, so nothing waits on
the coordinator's pg_locks), and the constraint checks that read the constraint's name
from the error (Citus reports the shard's constraint, and no constraint_name field).
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from integration.test_interleavings import *  # noqa: F403
from integration.test_interleavings import GUARD, NOW, assert_consistent, backfill, mark

from citus.conftest import Cluster
from citus.helpers import node_dsn, placement
from potato_runs.storage.admin_repo import AdminRepository

ON_WORKER = ("the holder takes the advisory lock in a coordinator session; a delegated "
             "write takes it on the user's worker, so it does not wait on the coordinator")


@pytest.mark.skip(reason=ON_WORKER)
def test_a_writer_waits_on_the_users_advisory_lock() -> None: ...


@pytest.mark.skip(reason=ON_WORKER)
def test_two_writers_queue_behind_the_lock_and_both_apply() -> None: ...


@pytest.mark.skip(reason=ON_WORKER + " (A's write, in a transaction block, is not "
                  "delegated: it locks on the coordinator)")
def test_mark_and_unmark_of_the_same_day_serialize() -> None: ...


@pytest.mark.skip(reason="the waiting backend is the worker's, not the coordinator session's "
                  "that pg_stat_activity is polled for")
def test_a_lockless_write_racing_a_locked_writer_waits_then_is_refused() -> None: ...


@pytest.mark.skip(reason="Citus errors carry no constraint_name (the message names the "
                  "shard's constraint, e.g. runs_no_overlap_102026)")
def test_a_write_that_skips_the_lock_is_refused() -> None: ...


@pytest.mark.skip(reason="SET CONSTRAINTS on the coordinator does not reach the shards: the "
                  "insert is refused at once, not at commit")
def test_deferring_the_exclusion_constraints_only_moves_the_refusal_to_commit() -> None: ...


@pytest.mark.skip(reason="its writer holds the lock inside a transaction block, where Citus "
                  "does not delegate the write: it locks on the coordinator, and the "
                  "rebuild locks on the worker (test_the_rebuild_and_a_delegated_write_...)")
def test_rebuild_waits_on_the_writers_lock() -> None: ...


async def advisory_waiters(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
    finally:
        await conn.close()


async def test_the_rebuild_and_a_delegated_write_share_the_lock_on_the_worker(
        citus_cluster: Cluster, sessions: tuple[asyncpg.Connection, ...],
        admin: AdminRepository, uid: uuid.UUID) -> None:
    """The user's lock on Citus lives on the user's worker: potato_lock_user (migration
    0013, force-delegated) taken in a transaction block holds both a delegated MarkDay and
    a rebuild (which takes it the same way) until it commits, and both then apply."""
    a, b, c = sessions
    await backfill(a, uid, ["2026-06-10", "2026-06-11"])
    worker = node_dsn(citus_cluster.dsn, await placement(c, uid))
    tx = a.transaction()
    await tx.start()
    await a.execute("SELECT potato_lock_user($1)", uid)
    write = asyncio.create_task(mark(b, uid, "2026-06-12"))
    rebuild = asyncio.create_task(admin.rebuild_user(uid, None, None, False, NOW, "iso"))
    deadline = asyncio.get_running_loop().time() + GUARD
    while await advisory_waiters(worker) < 2:   # both wait there, on the worker
        assert not write.done() and not rebuild.done(), (write, rebuild)
        assert asyncio.get_running_loop().time() < deadline, "nobody waits on the worker"
        await asyncio.sleep(0.01)
    assert not write.done() and not rebuild.done()
    await tx.commit()
    marked = await asyncio.wait_for(write, GUARD)
    await asyncio.wait_for(rebuild, GUARD)
    assert marked["change"] == "extended"
    await assert_consistent(c, admin, uid)
