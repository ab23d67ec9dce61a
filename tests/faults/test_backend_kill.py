"""Faults on a bad night: PostgreSQL backends killed under load (`pg_terminate_backend`).

Writers and readers call the real server while the server's database sessions are
terminated again and again. Every call must end in a status a client can act on: OK,
UNAVAILABLE (retry: the writes are idempotent), DEADLINE_EXCEEDED or ABORTED; never
INTERNAL or UNKNOWN. Afterwards the checker is clean for every user touched, and every
acknowledged mark is a fact. POTATO_FAULTS=1 makes the run longer.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import uuid

import asyncpg
import grpc

from faults.load import FULL, Calls, report
from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.storage.admin_repo import INVARIANT_QUERIES, invariant_sql
from support import rich_status

ROUNDS = 2_000 if FULL else 300
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.ABORTED}


async def test_killed_backends_never_give_internal(channel: grpc.aio.Channel,
                                                   db: asyncpg.Connection) -> None:
    stub, old = pb_grpc.RunsServiceStub(channel), v1_grpc.RunsServiceStub(channel)
    users = [str(uuid.uuid4()) for _ in range(8)]
    seen: collections.Counter[grpc.StatusCode] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    acknowledged: dict[str, set[dt.date]] = {u: set() for u in users}
    done = asyncio.Event()
    rng = random.Random(7)

    async def worker(user: str) -> None:
        for i in range(ROUNDS // len(users)):
            day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(300))
            try:
                if i % 4 == 3:
                    await old.GetStats(v1.GetStatsRequest(user_id=user), timeout=5)
                elif i % 4 == 2:
                    await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=5)
                else:
                    await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day.isoformat(),
                                                         time_zone="UTC"), timeout=5)
                    acknowledged[user].add(day)
                seen[grpc.StatusCode.OK] += 1
            except grpc.RpcError as exc:
                seen[exc.code()] += 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE and i % 4 < 2:   # a write
                    info, _, _ = rich_status(exc)
                    assert info is not None and info.reason == "DATABASE_UNAVAILABLE"
                    outcomes[info.metadata.get("write_outcome", "")] += 1

    async def killer() -> int:
        kills = 0
        while not done.is_set():
            kills += int(await db.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'potato-runs' AND pid <> pg_backend_pid()) k"))
            await asyncio.sleep(0.05)   # load: a kill wave every 50 ms, not synchronization
        return kills

    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(worker(u) for u in users))
    done.set()
    kills = await kill_task
    print(f"\nbackend kills: {kills}; status codes: {dict(seen)}; "
          f"write outcomes of UNAVAILABLE writes: {dict(outcomes)}")
    calls = Calls(codes=collections.Counter({c.name: n for c, n in seen.items()}),
                  outcomes=outcomes, acked_writes=sum(map(len, acknowledged.values())))
    report("pg_terminate_backend every 50 ms, in-process server", calls, None,
           "n/a (next call)", f"{kills} backends terminated; acknowledged marks checked below")
    assert set(outcomes) <= {"unknown", "not_applied"}, outcomes
    assert kills > 0
    assert set(seen) <= ACCEPTABLE, dict(seen)
    assert seen[grpc.StatusCode.OK] > 0
    for user in users:
        facts = {r[0] for r in await db.fetch(
            "SELECT checkin_date FROM daily_checkins WHERE user_id = $1", uuid.UUID(user))}
        assert acknowledged[user] <= facts, user
        for code in INVARIANT_QUERIES:
            rows = await db.fetch(invariant_sql(code, True), uuid.UUID(user))
            assert rows == [], (code, rows)
