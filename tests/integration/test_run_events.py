"""RunEventsService.WatchRunEvents: replay, live delivery, the switch between them,
resumption, the per-user filter, slow consumers, limits, retention and access.

A database of its own (the stream sees every user's events, so it must see only this
module's), a real server on port 0 and real clients. Every wait polls for a condition
with a deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from potato.runs.v2 import run_events_service_pb2 as epb
from potato.runs.v2 import run_events_service_pb2_grpc, runs_service_pb2_grpc
from potato.runs.v2 import runs_service_pb2 as rpb
from potato_runs.clock import FixedClock
from support import (
    ADMIN_METADATA,
    ADMIN_TOKEN,
    DEFAULT_NOW,
    ServerThread,
    fresh_database,
    rich_status,
)

from .helpers import backfill, mark, unmark

WAIT = 30.0
EXE = str(Path(sys.executable).parent / "potato-runs")


@pytest.fixture(scope="module")
def edsn(pg_dsn: str) -> str:
    return fresh_database(pg_dsn, "potato_events")


@pytest.fixture(scope="module")
def eserver(edsn: str) -> Iterator[ServerThread]:
    srv = ServerThread(edsn, FixedClock(DEFAULT_NOW), watcher_queue_size=500,
                       max_watchers=16).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def edb(edsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(edsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(eserver: ServerThread) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(eserver.target) as ch:
        yield ch


@pytest.fixture
def runs(channel: grpc.aio.Channel) -> runs_service_pb2_grpc.RunsServiceStub:
    return runs_service_pb2_grpc.RunsServiceStub(channel)


@pytest.fixture
def events(channel: grpc.aio.Channel) -> run_events_service_pb2_grpc.RunEventsServiceStub:
    return run_events_service_pb2_grpc.RunEventsServiceStub(channel)


def watch(stub: run_events_service_pb2_grpc.RunEventsServiceStub, *, after: int = 0,
          user: str = "", metadata: Any = ADMIN_METADATA) -> Any:
    return stub.WatchRunEvents(epb.WatchRunEventsRequest(user_id=user, after_event_id=after),
                               metadata=metadata)


class Collector:
    """Reads a stream into `got` in the background; `status` once it ended."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.got: list[epb.RunEvent] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.got.append(message.event)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def ids(self) -> list[int]:
        return [e.event_id for e in self.got]

    async def until(self, predicate: Any, timeout: float = WAIT) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            if self.task.done():
                raise AssertionError(f"the stream ended: {self.error!r}; got {self.ids}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; got {self.ids}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def poll(predicate: Any, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def table_ids(db: asyncpg.Connection, after: int, user: str | None = None) -> list[int]:
    rows = await db.fetch("SELECT event_id FROM run_events WHERE event_id > $1 AND "
                          "($2::uuid IS NULL OR user_id = $2) ORDER BY event_id", after,
                          uuid.UUID(user) if user else None)
    return [r[0] for r in rows]


async def head(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events"))


def new_user() -> str:
    return str(uuid.uuid4())


async def test_replay_from_a_cursor_with_the_user_filter(
        runs: Any, events: Any, edb: asyncpg.Connection) -> None:
    user, other = new_user(), new_user()
    start = await head(edb)
    await mark(runs, user, "2026-11-01")
    await mark(runs, other, "2026-11-01")
    await mark(runs, user, "2026-11-02")             # extended
    await mark(runs, user, "2026-11-04")             # created + deactivated
    await mark(runs, user, "2026-11-03")             # merged
    await unmark(runs, user, "2026-11-02")           # split
    mine = await table_ids(edb, start, user)
    assert len(mine) >= 6
    rows = {r["event_id"]: r for r in await edb.fetch(
        "SELECT * FROM run_events WHERE event_id = ANY($1::bigint[])", mine)}

    got = Collector(watch(events, after=mine[0], user=user))
    await got.until(lambda c: len(c.got) >= len(mine) - 1)
    assert got.ids == mine[1:]
    assert all(e.user_id == user for e in got.got)
    kinds = {e.event_id: epb.RunEventKind.Name(e.kind) for e in got.got}
    for event_id, kind in kinds.items():
        assert kind == "RUN_EVENT_KIND_" + rows[event_id]["kind"].removeprefix("run_").upper()
    merged = next(e for e in got.got if e.kind == epb.RUN_EVENT_KIND_MERGED)
    assert [(r.start_date, r.end_date) for r in merged.before] == [
        ("2026-11-01", "2026-11-02"), ("2026-11-04", "2026-11-04")]
    assert [(r.start_date, r.end_date, r.day_count) for r in merged.after] == [
        ("2026-11-01", "2026-11-04", 4)]
    split = next(e for e in got.got if e.kind == epb.RUN_EVENT_KIND_SPLIT)
    assert len(split.before) == 1 and len(split.after) == 2
    assert split.cause == epb.RUN_EVENT_CAUSE_UNMARK
    assert split.event_time.ToDatetime(dt.UTC) == DEFAULT_NOW
    await got.close()


async def test_live_events_arrive_after_the_replay(runs: Any, events: Any,
                                                   edb: asyncpg.Connection) -> None:
    user = new_user()
    start = await head(edb)
    got = Collector(watch(events, after=start))
    await mark(runs, user, "2026-10-01")
    await got.until(lambda c: any(e.user_id == user for e in c.got))
    await backfill(runs, user, ["2026-10-03", "2026-10-05"])
    expected = await table_ids(edb, start)
    await got.until(lambda c: len(c.got) >= len(expected))
    assert got.ids == expected
    await got.close()


async def test_request_id_of_the_write_is_on_its_events(runs: Any, events: Any,
                                                        edb: asyncpg.Connection) -> None:
    user = new_user()
    start = await head(edb)
    got = Collector(watch(events, after=start, user=user))
    await runs.MarkDay(rpb.MarkDayRequest(user_id=user, local_date="2026-09-01",
                                          time_zone="UTC"),
                       metadata=(("x-request-id", "trace-me-42"),), timeout=10)
    await got.until(lambda c: len(c.got) >= 1)
    assert got.got[0].request_id == "trace-me-42"
    assert got.got[0].cause == epb.RUN_EVENT_CAUSE_MARK
    await got.close()


async def test_no_gap_and_no_duplicate_at_the_switch_under_concurrent_writes(
        eserver: ServerThread, runs: Any, events: Any, edb: asyncpg.Connection) -> None:
    """Writers keep writing while watchers join (each replays, then switches to live);
    every watcher must end up with exactly the table's ids after its cursor, in order."""
    start = await head(edb)
    stop = asyncio.Event()
    users = [new_user() for _ in range(6)]
    days = [(dt.date(2026, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(300)]

    async def writer(user: str) -> None:
        rng = random.Random(user)
        while not stop.is_set():
            day = rng.choice(days)
            if rng.random() < 0.7:
                await mark(runs, user, day, tz="UTC")
            else:
                await unmark(runs, user, day)

    writers = [asyncio.ensure_future(writer(u)) for u in users]
    watchers: list[tuple[int, Collector]] = []
    try:
        for _ in range(5):   # join at different moments of the write load
            await poll(lambda: _grew(edb, 20))
            cursor = random.choice([start, await head(edb) - 5, await head(edb)])
            watchers.append((cursor, Collector(watch(events, after=max(cursor, 0)))))
        filtered = Collector(watch(events, after=start, user=users[0]))
        await poll(lambda: _grew(edb, 50))
    finally:
        stop.set()
        await asyncio.gather(*writers)
    everything = await table_ids(edb, start)
    assert len(everything) > 100
    for cursor, got in watchers:
        expected = [i for i in everything if i > cursor]
        await got.until(lambda c, n=len(expected): len(c.got) >= n)
        assert got.ids == expected
        await got.close()
    mine = await table_ids(edb, start, users[0])
    await filtered.until(lambda c: len(c.got) >= len(mine))
    assert filtered.ids == mine
    await filtered.close()


_last_head: dict[int, int] = {}


async def _grew(db: asyncpg.Connection, by: int) -> bool:
    """True once the table's head moved `by` ids since the last True for this conn."""
    now = await head(db)
    base = _last_head.setdefault(id(db), now)
    if now - base >= by:
        _last_head[id(db)] = now
        return True
    return False


async def test_an_event_that_commits_late_is_not_skipped(
        eserver: ServerThread, runs: Any, events: Any, edb: asyncpg.Connection) -> None:
    """Event ids commit out of order: g is drawn by a transaction held open, g+1 commits
    first. The stream must wait, then hand out g before g+1."""
    user = new_user()
    start = await head(edb)
    got = Collector(watch(events, after=start, user=user))
    await mark(runs, user, "2026-08-01")   # the stream is live once this arrives
    await got.until(lambda c: len(c.got) == 1)
    hub = eserver.app.run_events.hub   # type: ignore[union-attr]
    waits = hub.gap_waits
    held = edb
    tx = held.transaction()
    await tx.start()
    late = await held.fetchval(
        "INSERT INTO run_events (user_id, kind, cause, before, after, occurred_at) "
        "VALUES ($1, 'run_rebuilt', 'rebuild', $2::jsonb, $2::jsonb, $3) RETURNING event_id",
        uuid.UUID(user), json.dumps(_run_json("2026-08-01")), DEFAULT_NOW)
    await mark(runs, user, "2026-08-02")   # commits event late + 1 while `late` is open
    await poll(lambda: _true(hub.gap_waits > waits))
    assert len(got.got) == 1   # the hub holds late + 1 back while late may commit
    await tx.commit()
    await got.until(lambda c: len(c.got) >= 3)
    assert got.ids[1:] == [late, late + 1]
    await got.close()


async def test_a_late_event_whose_writer_started_after_the_others_is_not_skipped(
        eserver: ServerThread, events: Any, edsn: str) -> None:
    """The writer of g got its transaction id after the writer of g+1 got its own, and is
    still open when g+1 commits: a snapshot then has its xmax at or below g's writer,
    which it does not list as in progress (the case that lost events under load)."""
    user = new_user()
    early, late = await asyncpg.connect(edsn), await asyncpg.connect(edsn)
    insert = ("INSERT INTO run_events (user_id, kind, cause, before, after, occurred_at) "
              "VALUES ($1, 'run_rebuilt', 'rebuild', $2::jsonb, $2::jsonb, $3) "
              "RETURNING event_id")
    args = (uuid.UUID(user), json.dumps(_run_json("2026-08-10")), DEFAULT_NOW)
    try:
        start = await head(early)
        got = Collector(watch(events, after=start, user=user))
        hub = eserver.app.run_events.hub   # type: ignore[union-attr]
        await poll(lambda: _true(hub.watchers >= 1))
        t_early, t_late = early.transaction(), late.transaction()
        await t_early.start()
        await early.fetchval("SELECT pg_current_xact_id()")   # the smaller xid
        await t_late.start()
        g = await late.fetchval(insert, *args)                  # the larger xid draws g
        g1 = await early.fetchval(insert, *args)                # then g + 1
        waits = hub.gap_waits
        await t_early.commit()                                  # g + 1 visible, g not
        await poll(lambda: _true(hub.gap_waits > waits))
        assert got.ids == []   # held back while g's writer is open
        await t_late.commit()
        await got.until(lambda c: len(c.got) >= 2)
        assert got.ids == [g, g1]
        await got.close()
    finally:
        await early.close()
        await late.close()


async def _true(value: bool) -> bool:
    return value


def _run_json(day: str) -> dict[str, Any]:
    return {"run_id": 1, "start_date": day, "end_date": day, "day_count": 1, "active": True,
            "created_at": DEFAULT_NOW.isoformat(), "updated_at": DEFAULT_NOW.isoformat(),
            "last_extended_at": None}


async def test_resume_after_a_disconnect(runs: Any, events: Any,
                                         edb: asyncpg.Connection) -> None:
    user = new_user()
    start = await head(edb)
    for day in ("2026-07-01", "2026-07-03", "2026-07-05"):
        await mark(runs, user, day)
    first = Collector(watch(events, after=start, user=user))
    await first.until(lambda c: len(c.got) >= 2)
    await first.close()
    last = first.ids[-1]
    for day in ("2026-07-07", "2026-07-08"):
        await mark(runs, user, day)
    again = Collector(watch(events, after=last, user=user))
    expected = await table_ids(edb, last, user)
    await again.until(lambda c: len(c.got) >= len(expected))
    assert again.ids == expected
    assert sorted(set(first.ids) | set(again.ids)) == await table_ids(edb, start, user)
    await again.close()


async def test_a_slow_consumer_is_cut_off_and_resumes(
        eserver: ServerThread, runs: Any, events: Any, edb: asyncpg.Connection) -> None:
    """A client that stops reading: gRPC's window fills, then the watcher's queue (500
    here); the stream ends with RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW, last_event_id), the
    writes never wait, and a new stream from the client's cursor gets the rest."""
    start = await head(edb)
    # Without BDP probing the client's window stays at 64 KiB: fewer events fill it.
    slow_channel = grpc.aio.insecure_channel(eserver.target,
                                             options=[("grpc.http2.bdp_probe", 0)])
    call = watch(run_events_service_pb2_grpc.RunEventsServiceStub(slow_channel), after=start)
    dates = [(dt.date(2025, 3, 1) + dt.timedelta(days=2 * i)).isoformat() for i in range(300)]
    first = new_user()
    await mark(runs, first, "2026-11-01")
    received = [(await call.read()).event]   # live now; from here on nobody reads
    hub = eserver.app.run_events.hub   # type: ignore[union-attr]
    dropped = hub.too_slow
    for _ in range(100):
        # One backfill of 300 separate days writes 300 run_created (net events); the
        # writes never wait for the stream.
        await backfill(runs, new_user(), dates, tz="UTC")
        if hub.too_slow > dropped:
            break
    assert hub.too_slow == dropped + 1
    # Reading again: what gRPC held, then the status.
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                break
            received.append(message.event)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _, _ = rich_status(failure.value)
    assert info is not None and info.reason == "WATCHER_TOO_SLOW"
    ids = [e.event_id for e in received]
    assert int(info.metadata["last_event_id"]) == ids[-1]
    assert ids == (await table_ids(edb, start))[:len(ids)]
    resumed = Collector(watch(events, after=ids[-1]))
    expected = await table_ids(edb, ids[-1])
    await resumed.until(lambda c: len(c.got) >= len(expected))
    assert resumed.ids == expected
    await resumed.close()
    await slow_channel.close()


async def test_the_admin_token_is_required_without_a_policy(events: Any) -> None:
    for metadata in ((), (("authorization", "Bearer not-the-token-0123456789"),)):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in watch(events, metadata=metadata):
                break
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _, _ = rich_status(failure.value)
        assert info is not None and info.metadata["role"] == "events.watch"


async def test_bad_requests_are_invalid_argument(events: Any) -> None:
    for request, field in ((dict(user_id="not-a-uuid"), "user_id"),
                           (dict(after_event_id=-1), "after_event_id")):
        call = events.WatchRunEvents(epb.WatchRunEventsRequest(**request),
                                     metadata=ADMIN_METADATA)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call.read()
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _, bad, _ = rich_status(failure.value)
        assert bad is not None and bad.field_violations[0].field == field


async def test_watchers_beyond_the_limit_are_refused(edsn: str) -> None:
    srv = ServerThread(edsn, FixedClock(DEFAULT_NOW), max_watchers=2).start()
    try:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = run_events_service_pb2_grpc.RunEventsServiceStub(ch)
            open_ = [Collector(watch(stub, after=10**12)) for _ in range(2)]
            await poll(lambda: _true(srv.app.shedder.open_streams[  # type: ignore[union-attr]
                "/potato.runs.v2.RunEventsService/WatchRunEvents"] == 2))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await watch(stub).read()
            assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info, _, _ = rich_status(failure.value)
            assert info is not None and info.reason == "TOO_MANY_WATCHERS"
            # Streams are not calls in flight: unary calls still get through.
            assert srv.app.shedder.in_flight == 0   # type: ignore[union-attr]
            for c in open_:
                await c.close()
    finally:
        srv.stop()


async def test_a_stopping_server_ends_streams_with_server_draining(edsn: str) -> None:
    srv = ServerThread(edsn, FixedClock(DEFAULT_NOW)).start()
    async with grpc.aio.insecure_channel(srv.target) as ch:
        got = Collector(watch(run_events_service_pb2_grpc.RunEventsServiceStub(ch), after=0))
        await poll(lambda: _true(srv.app.run_events.hub.watchers == 1))  # type: ignore[union-attr]
        await asyncio.to_thread(srv.stop)
        await asyncio.gather(got.task)
        assert got.error is not None and got.error.code() == grpc.StatusCode.UNAVAILABLE
        info, _, _ = rich_status(got.error)
        assert info is not None and info.reason == "SERVER_DRAINING"
        assert info.metadata["last_event_id"] == str(got.ids[-1] if got.ids else 0)


@pytest.fixture(scope="module")
def retention_dsn(pg_dsn: str) -> str:
    return fresh_database(pg_dsn, "potato_events_retention")


async def test_retention_purges_old_events_and_expired_cursors_fail(retention_dsn: str) -> None:
    dsn = retention_dsn
    clock = FixedClock(DEFAULT_NOW)
    srv = ServerThread(dsn, clock, run_events_retention=86_400.0).start()
    try:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            runs = runs_service_pb2_grpc.RunsServiceStub(ch)
            stub = run_events_service_pb2_grpc.RunEventsServiceStub(ch)
            user = new_user()
            await mark(runs, user, "2026-11-01")
            await mark(runs, user, "2026-11-03")
            clock.set(DEFAULT_NOW + dt.timedelta(days=2))
            await mark(runs, user, "2026-11-05")
            conn = await asyncpg.connect(dsn)
            try:
                before = await table_ids(conn, 0)
                purge = srv.app.run_events_purge   # type: ignore[union-attr]
                deleted = srv.run(purge.purge_once())   # type: ignore[union-attr]
                kept = await table_ids(conn, 0)
                purged = await conn.fetchval("SELECT purged_through FROM run_events_retention")
            finally:
                await conn.close()
            assert deleted == len(before) - len(kept) > 0
            assert purged == max(set(before) - set(kept)) and min(kept) > purged
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await watch(stub, after=before[0]).read()
            assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            info, _, _ = rich_status(failure.value)
            assert info is not None and info.reason == "CURSOR_EXPIRED"
            assert info.metadata["oldest_event_id"] == str(purged)
            for after in (0, purged):   # 0: from the oldest kept
                got = Collector(watch(stub, after=after))
                await got.until(lambda c: len(c.got) >= len(kept))
                assert got.ids == kept
                await got.close()
    finally:
        srv.stop()


def _cli_env() -> dict[str, str]:
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", "POTATO_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("POTATO_TARGET", None)
    return env


async def test_cli_watch_prints_one_line_per_event_and_ctrl_c_exits_0(
        eserver: ServerThread, runs: Any, edb: asyncpg.Connection) -> None:
    user = new_user()
    start = await head(edb)
    await mark(runs, user, "2026-06-01")
    await mark(runs, user, "2026-06-03")   # run_created, run_deactivated
    expected = await table_ids(edb, start, user)
    proc = await asyncio.create_subprocess_exec(
        EXE, "events", "watch", "--target", eserver.target, "--user", user,
        "--after", str(start), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_cli_env())
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
                 for _ in expected]
        await mark(runs, user, "2026-06-04")   # live: run_extended
        lines.append((await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode())
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), WAIT)
    assert [int(ln.split()[0]) for ln in lines] == await table_ids(edb, start, user)
    assert " run_created user=" + user in lines[0] and "cause=mark" in lines[0]
    assert " run_extended " in lines[-1] and "2026-06-03..2026-06-04 (2d, active)" in lines[-1]
    stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_cli_watch_errors_are_one_line_with_a_hint(eserver: ServerThread) -> None:
    env = {**_cli_env(), "POTATO_ADMIN_TOKEN": "wrong-token-0123456789"}
    proc = await asyncio.create_subprocess_exec(
        EXE, "events", "watch", "--target", eserver.target, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    text = err.decode()
    assert proc.returncode == 1, text
    assert [ln for ln in text.splitlines() if ln.startswith("error: ")] == [
        ln for ln in text.splitlines() if ln.startswith("error: UNAUTHENTICATED")]
    assert "hint:" in text and "Traceback" not in text and out == b""


async def test_an_idle_tail_stops_and_the_next_stream_starts_it_again(
        eserver: ServerThread, runs: Any, events: Any, edb: asyncpg.Connection) -> None:
    hub = eserver.app.run_events.hub   # type: ignore[union-attr]
    linger, hub._linger = hub._linger, 0.05
    try:
        await poll(lambda: _true(hub.streams == 0 and (hub._task is None
                                                       or hub._task.done())))
        user = new_user()
        start = await head(edb)
        await mark(runs, user, "2026-05-01")   # while nothing listens
        got = Collector(watch(events, after=start, user=user))
        await mark(runs, user, "2026-05-02")
        expected = await table_ids(edb, start, user)
        await got.until(lambda c: len(c.got) >= len(expected))
        assert got.ids == expected
        await got.close()
    finally:
        hub._linger = linger


async def test_raw_request_bytes_never_give_internal(eserver: ServerThread) -> None:
    """Garbage and odd-but-valid requests: INVALID_ARGUMENT with a google.rpc.Status, or a
    stream that runs until the client's deadline; never INTERNAL or UNKNOWN."""
    rng = random.Random(11)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
                for _ in range(40)]
    payloads += [epb.WatchRunEventsRequest(after_event_id=2**63 - 1).SerializeToString(),
                 epb.WatchRunEventsRequest(user_id="é" * 300).SerializeToString(),
                 b"\x0a\x02\xff\xfe"]   # user_id that is not UTF-8
    async with grpc.aio.insecure_channel(eserver.target) as ch:
        call = ch.unary_stream("/potato.runs.v2.RunEventsService/WatchRunEvents",
                               request_serializer=None, response_deserializer=None)
        for payload in payloads:
            stream = call(payload, metadata=ADMIN_METADATA, timeout=1.0)
            try:
                async for _ in stream:
                    pass
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                      grpc.StatusCode.DEADLINE_EXCEEDED), (payload, exc)
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    info, _, _ = rich_status(exc)
                    assert info is not None and info.domain == "runs.potato.app"
