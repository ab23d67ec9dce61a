"""The blue/green rebuild playbook of docs/playbooks.md (```bash playbook=rebuild-blue-green),
run command by command through the real `potato-runs` CLI against a live server that has
an owner connection, while a client keeps marking and unmarking days through it: every
command exits 0, the rebuild's JSON says it swapped, every acknowledged write is in the
facts and the checker is clean afterwards. Also: the error (and its hint) from a server
without an owner connection, and the offline path with the owner's --dsn.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
from integration.test_blue_green_rebuild import _db, seed

from e2e.test_playbooks import playbook, run_cli
from potato.runs.v2 import runs_service_pb2 as rpb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from support import DEFAULT_NOW, ServerThread

NAME = "rebuild-blue-green"


def test_the_playbook_is_a_cli_sequence_around_one_blue_green_rebuild() -> None:
    commands = playbook(NAME)
    assert commands and all(c.startswith("potato-runs ") for c in commands)
    rebuilds = [c for c in commands if "--blue-green" in c]
    assert ["--dry-run" in c for c in rebuilds] == [True, False], rebuilds
    assert commands[-1] == "potato-runs check"


@pytest.fixture
def live(pg_dsn: str) -> Iterator[tuple[str, ServerThread]]:
    dsn = _db(pg_dsn)
    asyncio.run(seed(dsn, 40))
    srv = ServerThread(dsn, FixedClock(DEFAULT_NOW), owner=True).start()
    try:
        yield dsn, srv
    finally:
        srv.stop()


async def test_the_playbook_rebuilds_while_writes_flow(
        live: tuple[str, ServerThread]) -> None:
    dsn, server = live
    users = [uuid.UUID(int=7000 + i) for i in range(8)]
    model: dict[tuple[uuid.UUID, dt.date], bool] = {}
    stop = asyncio.Event()
    acked = 0

    async def writer() -> None:
        nonlocal acked
        rng = random.Random(7)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = RunsServiceStub(channel)
            while not stop.is_set():
                user = rng.choice(users)
                day = dt.date(2026, 10, 1) + dt.timedelta(days=rng.randrange(50))
                mark = rng.random() < 0.7
                if mark:
                    await stub.MarkDay(rpb.MarkDayRequest(
                        user_id=str(user), local_date=day.isoformat(), time_zone="UTC"),
                        timeout=30)
                else:
                    await stub.UnmarkDay(rpb.UnmarkDayRequest(
                        user_id=str(user), local_date=day.isoformat()), timeout=30)
                model[(user, day)] = mark
                acked += 1

    task = asyncio.create_task(writer())
    outputs = []
    try:
        for command in playbook(NAME):
            code, out, err = await run_cli(command, server.target)
            assert code == 0, (command, out, err)
            outputs.append((command, out))
    finally:
        stop.set()
        await task
    assert acked > 0
    report = json.loads(next(out for c, out in outputs
                             if "--blue-green" in c and "--dry-run" not in c))
    assert report["rebuild_id"] > 0 and report["old_table_dropped"] is True
    assert set(report["phase_seconds"]) == {"build", "index", "catchup", "swap", "drop"}
    conn = await asyncpg.connect(dsn)
    try:
        present = {(r["user_id"], r["checkin_date"]) for r in await conn.fetch(
            "SELECT user_id, checkin_date FROM daily_checkins WHERE user_id = ANY($1::uuid[])",
            users)}
        assert {k for k, marked in model.items() if marked} == {k for k in model if k in present}
        assert await conn.fetchval("SELECT status FROM runs_rebuilds WHERE rebuild_id = $1",
                                   report["rebuild_id"]) == "swapped"
    finally:
        await conn.close()


async def test_a_server_without_an_owner_connection_says_how_to_run_it(
        server: ServerThread) -> None:
    code, out, err = await run_cli("potato-runs rebuild --all --blue-green", server.target)
    assert code == 2, (out, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "FAILED_PRECONDITION" in err and "--blue-green --dsn" in err, err


async def test_offline_with_the_owners_dsn(pg_dsn: str) -> None:
    dsn = await asyncio.to_thread(_db, pg_dsn)
    await seed(dsn, 10)
    code, out, err = await run_cli(f"potato-runs rebuild --all --blue-green --dsn {dsn} --json",
                                   "127.0.0.1:1")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["users"] == 10 and report["users_changed"] == 0, report
    code, out, err = await run_cli(f"potato-runs check --dsn {dsn}", "127.0.0.1:1")
    assert code == 0, (out, err)
