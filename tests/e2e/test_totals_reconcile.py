"""The "Nightly totals reconciliation" playbook, run through the real CLI against a live
server: stored totals damaged with raw SQL (wrong figures, a missing row, an extra row,
a wrong and a missing lifetime row); `totals reconcile --dry-run` reports the damage
(exit 1) and changes nothing; `totals reconcile` repairs it (exit 0); a second
`--dry-run` is clean (exit 0).

The commands come from the ```bash playbook=totals-reconcile block of
docs/playbooks.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import pytest

from e2e.test_playbooks import playbook, run_cli
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2 import runs_service_pb2_grpc as v2_grpc
from potato_runs.clock import FixedClock
from support import DEFAULT_NOW, FILL_TOTALS, TOTALS_DRIFT, ServerThread, fresh_database

NAME = "totals-reconcile"
USERS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"potato-totals-e2e-{i}")) for i in range(30)]


def playbook_commands() -> list[str]:
    return playbook(NAME)


def test_the_playbook_dry_runs_repairs_and_confirms() -> None:
    commands = playbook_commands()
    assert all(c.startswith("potato-runs ") for c in commands)
    reconciles = [c for c in commands if c.startswith("potato-runs totals reconcile")]
    kinds = ["dry" if "--dry-run" in c else "repair" for c in reconciles]
    assert kinds[0] == "dry" and "repair" in kinds and kinds[-1] == "dry", reconciles


@pytest.fixture(scope="module")
def totals_dsn(pg_dsn: str) -> str:
    return fresh_database(pg_dsn, "potato_totals_e2e")


@pytest.fixture(scope="module")
def live(totals_dsn: str) -> Iterator[ServerThread]:
    srv = ServerThread(totals_dsn, FixedClock(DEFAULT_NOW)).start()
    try:
        yield srv
    finally:
        srv.stop()


async def snapshot(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    return ([tuple(r) for r in await conn.fetch("SELECT * FROM run_totals ORDER BY 1, 2")],
            [tuple(r) for r in await conn.fetch("SELECT * FROM user_totals ORDER BY 1")])


async def damage(conn: asyncpg.Connection) -> int:
    """Returns the rows it damaged (each one is a drifted row)."""
    u = USERS
    await conn.execute("UPDATE run_totals SET total_days = total_days + 1 "          # wrong
                       "WHERE user_id = $1 AND yyyymm = 202610", u[0])
    await conn.execute("DELETE FROM run_totals WHERE user_id = $1 AND yyyymm = 202609",
                       u[1])                                                         # missing
    await conn.execute("INSERT INTO run_totals VALUES ($1, 202503, 1, 1, now())", u[2])  # extra
    await conn.execute("UPDATE user_totals SET longest_run_days = 0 WHERE user_id = $1",
                       u[3])                                                         # wrong
    await conn.execute("DELETE FROM user_totals WHERE user_id = $1", u[4])           # missing
    return 5


async def test_totals_reconcile_playbook_against_a_live_server(
        live: ServerThread, totals_dsn: str) -> None:
    async with grpc.aio.insecure_channel(live.target) as ch:
        stub = v2_grpc.RunsServiceStub(ch)
        for i, user in enumerate(USERS):   # runs across month ends, one a merge over two
            days = [f"2026-{m:02d}-{d:02d}" for m, d in
                    [(9, 28), (9, 29), (9, 30), (10, 1), (10, 2), (10, 4 + i % 5), (11, 3)]]
            await stub.BackfillDays(v2.BackfillDaysRequest(
                user_id=user, local_dates=days, time_zone="America/New_York"), timeout=30)
    db = await asyncpg.connect(totals_dsn)
    try:
        await db.execute(FILL_TOTALS)   # a known starting point: stored = computed
        assert await db.fetchval(TOTALS_DRIFT) == 0
        damaged = await damage(db)
        assert await db.fetchval(TOTALS_DRIFT) > 0
        broken = True
        for command in playbook_commands():
            before = await snapshot(db)
            code, out, err = await run_cli(command, live.target)
            if not command.startswith("potato-runs totals reconcile"):
                assert code == 0, (command, out, err)
                continue
            if "--dry-run" in command:
                assert code == (1 if broken else 0), (command, out, err)
                assert await snapshot(db) == before, f"{command} changed the totals"
                if "--json" in command:
                    report = json.loads(out)
                    assert report["rows_drifted"] == (damaged if broken else 0), report
                    assert report["rows_repaired"] == 0 and report["users_checked"] == 30
                    assert set(report["example_user_ids"]) == (set(USERS[:5]) if broken
                                                                else set()), report
                else:
                    assert ("drift found" if broken else "ok") in out, out
            else:
                assert code == 0, (command, out, err)
                assert await db.fetchval(TOTALS_DRIFT) == 0, out
                if "--json" in command:
                    assert json.loads(out)["rows_repaired"] == damaged
                else:
                    assert "repaired" in out, out
                broken = False
        assert not broken, "the playbook never repaired"
        assert await db.fetchval(TOTALS_DRIFT) == 0
    finally:
        await db.close()


async def test_offline_run_lists_users_it_cannot_repair_and_exits_2(
        live: ServerThread, totals_dsn: str) -> None:
    """--dsn works on the database directly; a user whose runs drift from the facts
    cannot be repaired by the reconciliation (exit 2, with the rebuild hint), the others
    are; after `rebuild --user` it is clean."""
    user = USERS[7]
    db = await asyncpg.connect(totals_dsn)
    try:
        await db.execute(FILL_TOTALS)   # a known starting point: stored = computed
        await damage(db)
        await db.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", user)
        await db.execute("UPDATE user_totals SET run_count = 99 WHERE user_id = $1", user)
        code, out, err = await run_cli(
            f"potato-runs totals reconcile --json --batch 7 --dsn {totals_dsn}", live.target)
        assert code == 2, (out, err)
        report = json.loads(out)
        assert report["rows_drifted"] == 6 and report["rows_repaired"] >= 5, report
        assert [f["user_id"] for f in report["failed"]] == [user]
        assert f"potato-runs rebuild --user {user}" in report["failed"][0]["error"]
        code, out, err = await run_cli(f"potato-runs rebuild --user {user} --dsn {totals_dsn}",
                                       live.target)
        assert code == 0, (out, err)
        code, out, err = await run_cli(f"potato-runs totals reconcile --dsn {totals_dsn}",
                                       live.target)
        assert code == 0, (out, err)
        assert await db.fetchval(TOTALS_DRIFT) == 0
    finally:
        await db.close()


async def test_no_server_is_one_error_line_and_exit_2(live: ServerThread) -> None:
    code, out, err = await run_cli("potato-runs totals reconcile --dry-run --target "
                                   "127.0.0.1:1", live.target)
    assert code == 2, (out, err)
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")], err
    assert "Traceback" not in out + err
