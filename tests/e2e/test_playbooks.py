"""The rollout playbooks, executed from docs/playbooks.md itself.

Two replicas (A and B) serve one fresh database with a population of users; v1 read
traffic flows on both while the commands of the playbook blocks `shadow`, `cutover`,
`steady-state` and `rollback` run, in that order, through the real `potato-runs`
executable against replica A. Between commands the test checks that:

- with shadow at 100 % every answer is `legacy` and the comparisons are counted, and
  `shadow diff` says GO;
- after each rollout step, the share of `projection` answers on replica B is exactly the
  share of users the flag's buckets select, and close to the rollout percent;
- after rollback every answer on replica B is `legacy` within one second.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2 import runs_service_pb2_grpc as v2_grpc
from potato_runs.clock import FixedClock
from potato_runs.domain.flags import RUNS_V2, FlagState, Variant, evaluate
from support import ADMIN_TOKEN, DEFAULT_NOW, ServerThread, fresh_database

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "docs" / "playbooks.md"
USERS = 2_000
READ_SOURCE = "potato-read-source"
FENCE = re.compile(r"^```bash playbook=(?P<name>[\w-]+)\n(?P<body>.*?)^```", re.M | re.S)
ROLLOUT = re.compile(r"--rollout (?P<pct>[\d.]+)")


def playbook(name: str) -> list[str]:
    """The commands of one ```bash playbook=NAME block, in order (comments dropped)."""
    blocks = [m["body"] for m in FENCE.finditer(PLAYBOOKS.read_text()) if m["name"] == name]
    assert len(blocks) == 1, f"docs/playbooks.md must have one `playbook={name}` block"
    lines = [ln.strip() for ln in blocks[0].splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_playbooks_are_cli_sequences() -> None:
    for name in ("shadow", "cutover", "rollback", "steady-state", "move-to-citus", "scale-out"):
        commands = playbook(name)
        assert commands and all(c.startswith("potato-runs ") for c in commands), name
    steps = [float(m["pct"]) for c in playbook("cutover") if (m := ROLLOUT.search(c))]
    assert steps == [1, 10, 50, 100]


@pytest.fixture(scope="module")
def playbook_dsn(pg_dsn: str) -> str:
    """A database of its own: the population diff and the gates see only this test's data."""
    return fresh_database(pg_dsn, "potato_playbook")


@pytest.fixture(scope="module")
def replicas(playbook_dsn: str) -> Iterator[tuple[ServerThread, ServerThread]]:
    clock = FixedClock(DEFAULT_NOW)
    a = ServerThread(playbook_dsn, clock).start()
    b = ServerThread(playbook_dsn, clock).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


async def run_cli(command: str, target: str) -> tuple[int, str, str]:
    argv = shlex.split(command)
    assert argv[0] == "potato-runs"
    env = {**os.environ, "POTATO_TARGET": target, "POTATO_ADMIN_TOKEN": ADMIN_TOKEN,
           "GRPC_ENABLE_FORK_SUPPORT": "false", "COLUMNS": "160"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "potato_runs.cli", *argv[1:], env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def sources(stub: v1_grpc.RunsServiceStub, users: list[str]) -> dict[str, str]:
    """The read source each user's v1 GetCurrentRun answer came from."""
    async def one(uid: str) -> tuple[str, str]:
        call = stub.GetCurrentRun(v1.GetCurrentRunRequest(user_id=uid), timeout=10)
        md = await call.initial_metadata()
        await call
        return uid, next(v for k, v in md if k == READ_SOURCE)

    out: dict[str, str] = {}
    for i in range(0, len(users), 100):
        out.update(await asyncio.gather(*(one(u) for u in users[i:i + 100])))
    return out


async def until(check: object, bound: float, what: str) -> float:
    """Polls the async predicate `check` until it holds; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():  # type: ignore[operator]
        assert loop.time() - start < bound, f"{what} took more than {bound} s"
        await asyncio.sleep(0.01)
    return loop.time() - start


@pytest.fixture(scope="module")
def population() -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"potato-playbook-{i}")) for i in range(USERS)]


@pytest.fixture
async def seeded(replicas: tuple[ServerThread, ServerThread],
                 population: list[str]) -> AsyncIterator[None]:
    async with grpc.aio.insecure_channel(replicas[0].target) as ch:
        stub = v2_grpc.RunsServiceStub(ch)

        async def seed(i: int, uid: str) -> None:
            days = [f"2026-11-{d:02d}" for d in range(1 + i % 7, 21) if (d + i) % 5]
            await stub.BackfillDays(v2.BackfillDaysRequest(
                user_id=uid, local_dates=days, time_zone="America/New_York"), timeout=30)

        for i in range(0, USERS, 50):
            await asyncio.gather(*(seed(j, u) for j, u in
                                   enumerate(population[i:i + 50], start=i)))
    yield


async def test_shadow_cutover_steady_state_and_rollback_from_the_playbook(
        replicas: tuple[ServerThread, ServerThread], seeded: None, population: list[str],
        playbook_dsn: str) -> None:
    a, b = replicas
    db = await asyncpg.connect(playbook_dsn)
    stop = asyncio.Event()
    report: dict[str, object] = {}
    async with grpc.aio.insecure_channel(a.target) as cha, \
            grpc.aio.insecure_channel(b.target) as chb:
        stub_a, stub_b = v1_grpc.RunsServiceStub(cha), v1_grpc.RunsServiceStub(chb)

        async def traffic() -> None:   # v1 reads on both replicas, all along
            i = 0
            while not stop.is_set():
                batch = [population[(i + k) % USERS] for k in range(50)]
                await asyncio.gather(
                    *(s.GetStats(v1.GetStatsRequest(user_id=u), timeout=10)
                      for s in (stub_a, stub_b) for u in batch))
                i += 50

        async def comparisons() -> int:
            return int(await db.fetchval(
                "SELECT coalesce(sum(count), 0) FROM shadow_comparisons WHERE flag = $1", RUNS_V2))

        load = asyncio.create_task(traffic())
        try:
            # --- Shadow & diff
            for command in playbook("shadow"):
                if command.startswith("potato-runs shadow diff"):
                    async def enough() -> bool:
                        return await comparisons() >= 1_000
                    await until(enough, 60, "1,000 shadow comparisons")
                    answers = await sources(stub_b, population)
                    assert set(answers.values()) == {"legacy"}
                code, out, err = await run_cli(command, a.target)
                assert code == 0, (command, out, err)
                if command.startswith("potato-runs shadow diff"):
                    assert "GO" in out and "NO-GO" not in out, out

            # --- Cutover: the projection share follows the rollout, on the other replica
            for command in playbook("cutover"):
                code, out, err = await run_cli(command, a.target)
                assert code == 0, (command, out, err)
                step = ROLLOUT.search(command)
                if step is None:
                    continue
                pct = float(step["pct"])
                state = FlagState(RUNS_V2, enabled=True, rollout_basis_points=round(pct * 100),
                                  shadow_basis_points=10_000)
                expected = {u for u in population if evaluate(state, uuid.UUID(u)) is Variant.V2}

                async def b_follows(expected: set[str] = expected) -> bool:
                    got = await sources(stub_b, population)
                    return {u for u, s in got.items() if s == "projection"} == expected

                await until(b_follows, 5, f"replica B to serve {pct} % from the projection")
                share = len(expected) / USERS
                report[f"projection share at {pct:g} %"] = share
                assert abs(share - pct / 100) < 0.03, (pct, share)

            # --- Steady state checks
            for command in playbook("steady-state"):
                code, out, err = await run_cli(command, a.target)
                assert code == 0, (command, out, err)

            # --- Rollback: every answer legacy on replica B within one second
            [command] = playbook("rollback")
            code, out, err = await run_cli(command, a.target)
            assert code == 0, (command, out, err)

            sample = population[:50]   # every one of them was served v2 at 100 %

            async def all_legacy() -> bool:
                return set((await sources(stub_b, sample)).values()) == {"legacy"}

            report["rollback seconds"] = await until(all_legacy, 1.0, "rollback on replica B")
        finally:
            stop.set()
            await load
            await db.close()
    print(f"\nplaybook figures: {report}")
