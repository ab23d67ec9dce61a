"""The "Move from single PostgreSQL to Citus" playbook (docs/playbooks.md), run: a
coordinator and two workers whose coordinator holds the one-database schema with data
written through a real `serve` process; the playbook's commands in order (the server
stopped for `migrate --citus`, started again after it); then the data is the same, it
lives on the workers, and the service writes and streams on the distributed schema."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from e2e.clitools import ENV, EXE, start, stop
from e2e.test_playbooks import playbook

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.app import Migrator
from potato_runs.storage.embedded_citus import EmbeddedCitus, chmod_base
from potato_runs.storage.roles import APP_ROLE
from support import APP_PASSWORD, app_dsn, prepare_roles

DAYS = ["2025-06-01", "2025-06-02", "2025-06-04", "2025-06-05", "2025-06-03"]


@pytest.fixture
def single() -> Iterator[EmbeddedCitus]:
    """The cluster, its coordinator holding the schema as one PostgreSQL would."""
    base = Path(tempfile.mkdtemp(prefix="potato-citus-move-"))
    chmod_base(base)
    citus = EmbeddedCitus(base, workers=2)

    async def prepare() -> None:
        await prepare_roles(citus.dsn())
        await citus.authorize(APP_ROLE, APP_PASSWORD)
        await Migrator(citus.dsn()).run()   # not distributed
        await prepare_roles(citus.dsn())

    try:
        citus.start()
        asyncio.run(prepare())
        yield citus
    finally:
        citus.stop()
        shutil.rmtree(base, ignore_errors=True)


def run(command: str, env: dict[str, str]) -> tuple[int, str]:
    argv = shlex.split(command)
    assert argv[0] == "potato-runs"
    res = subprocess.run([EXE, *argv[1:]], capture_output=True, text=True, timeout=300,
                         env=env, check=False)
    return res.returncode, res.stdout + res.stderr


async def snapshot(dsn: str) -> tuple[list[tuple[object, ...]], ...]:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            [tuple(r) for r in await conn.fetch(
                "SELECT user_id, checkin_date, time_zone FROM daily_checkins ORDER BY 1, 2")],
            [tuple(r) for r in await conn.fetch(
                "SELECT user_id, run_id, start_date, end_date, day_count, active FROM runs "
                "ORDER BY 1, 3")],
            [tuple(r) for r in await conn.fetch(
                "SELECT user_id, event_id, kind FROM run_events ORDER BY 2")],
            [tuple(r) for r in await conn.fetch(
                "SELECT user_id, yyyymm, streak_days, total_days FROM run_totals ORDER BY 1, 2")],
        )
    finally:
        await conn.close()


async def coordinator_local_bytes(dsn: str) -> dict[str, int]:
    """The size of each distributed table's own storage on the coordinator: its rows were
    copied into the shards, and the local copy truncated (0 bytes)."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0]: r[1] for r in await conn.fetch(
            """SELECT logicalrelid::regclass::text, pg_relation_size(logicalrelid)
                 FROM pg_dist_partition WHERE partmethod = 'h'""")}
    finally:
        await conn.close()


def test_the_move_to_citus_playbook(single: EmbeddedCitus) -> None:
    commands = playbook("move-to-citus")
    assert commands == ["potato-runs check", "potato-runs migrate --citus",
                        "potato-runs health --wait 30", "potato-runs check"]
    su = single.dsn()
    users = [str(uuid.uuid4()) for _ in range(12)]

    def serve() -> tuple[subprocess.Popen[str], str]:
        return start(None, "--dsn", app_dsn(su), "--migrate-dsn", su)

    proc, target = serve()
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.RunsServiceStub(ch)
            for user in users:
                for day in DAYS:
                    stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day,
                                                   time_zone="UTC"), timeout=10)
        code, out = run(commands[0], {**ENV, "POTATO_TARGET": target})
        assert code == 0, out
    finally:
        stop(proc)
    before = asyncio.run(snapshot(su))
    assert len(before[0]) == len(users) * len(DAYS)

    code, out = run(commands[1], {**ENV, "POTATO_DSN": su})
    assert code == 0, out
    assert "distributed runs by user_id" in out and "delegated potato_mark_day(" in out, out
    assert asyncio.run(snapshot(su)) == before   # the same rows, now in the shards
    local = asyncio.run(coordinator_local_bytes(su))
    assert "runs" in local and set(local.values()) == {0}, local

    proc, target = serve()
    try:
        for command in commands[2:]:
            code, out = run(command, {**ENV, "POTATO_TARGET": target})
            assert code == 0, (command, out)
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.RunsServiceStub(ch)
            res = stub.MarkDay(pb.MarkDayRequest(user_id=users[0], local_date="2025-06-06",
                                                 time_zone="UTC"), timeout=10)
            assert (res.run.start_date, res.run.end_date) == ("2025-06-01", "2025-06-06")
    finally:
        stop(proc)
    after = asyncio.run(snapshot(su))
    assert set(before[0]) < set(after[0]) and len(after[0]) == len(before[0]) + 1
    # The new event sorts after every event written before the move (time-first ids).
    assert after[2][-1][1] > max(e[1] for e in before[2])
    assert after[2][-1][0] == uuid.UUID(users[0])
