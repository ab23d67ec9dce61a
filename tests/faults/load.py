"""Shared machinery of the fault suite: sizes, the server as a real process, writers
that own their users and remember every write's outcome, the final verification, and
one report row per scenario.

The model is per (user, date): the set of states the date may be in. An acknowledged
MarkDay/BackfillDays makes it {marked}, an acknowledged UnmarkDay {unmarked}; a write
that failed with `write_outcome=not_applied` leaves it as it was (so the final check
asserts that it really was not applied); any other failure (`unknown`, a dropped
connection, a client deadline) adds the write's effect to the possible states. Each user
belongs to one worker, which sends its writes one at a time, so the order of a user's
writes is the order the worker chose.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato.runs.v2 import totals_service_pb2 as totals_pb
from potato.runs.v2 import totals_service_pb2_grpc as totals_grpc
from potato_runs.domain.runs import runs_from_dates
from potato_runs.storage.admin_repo import INVARIANT_QUERIES, invariant_sql
from support import TOTALS_DRIFT, app_dsn

FULL = os.environ.get("POTATO_FAULTS") == "1"
"""POTATO_FAULTS=1: the full sizes; otherwise the small default subset CI runs."""


@dataclass(frozen=True)
class Sizes:
    """Every size of the suite, in one place (default subset vs POTATO_FAULTS=1)."""

    sigkill_rounds: int
    terminate_seconds: int
    """pg_terminate_backend waves, one per second."""
    pg_stop_seconds: float
    overload_seconds: float
    sigterm_rounds: int
    workers: int
    users_per_worker: int
    load_before_fault: tuple[float, float]
    """Seconds of load before a SIGKILL/SIGTERM, drawn uniformly (a random moment)."""
    overload_limit: int = 30
    """POTATO_MAX_CONCURRENT_RPCS of the overload scenario; 3x as many callers."""


SIZES = (Sizes(sigkill_rounds=10, terminate_seconds=20, pg_stop_seconds=10.0,
               overload_seconds=20.0, sigterm_rounds=3, workers=8, users_per_worker=6,
               load_before_fault=(0.5, 3.0))
         if FULL else
         Sizes(sigkill_rounds=2, terminate_seconds=3, pg_stop_seconds=2.0,
               overload_seconds=5.0, sigterm_rounds=1, workers=4, users_per_worker=4,
               load_before_fault=(0.3, 1.0)))

RECOVERY_BOUND = 30.0
"""Seconds within which the service must answer OK again after a fault ends."""
START_BOUND = 60.0
"""Seconds a `serve` process may take to print its address."""
CALL_TIMEOUT = 10.0
SEED = int(os.environ.get("POTATO_FAULTS_SEED", "20260"))
ADMIN_TOKEN = "faults-admin-token-0123456789"
FIRST_DAY = dt.date(2025, 3, 1)
WINDOW = 90
"""Each user's writes fall in [FIRST_DAY, FIRST_DAY + WINDOW): runs grow, merge and split."""
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 500)]
"""Clients reconnect within half a second of a restarted server (gRPC's default backoff
grows to minutes, which would measure the client, not the service)."""
LOG_ALARMS = ("internal error in", "unexpected error in", "exception was never retrieved")
"""Server log lines of an INTERNAL answer (transport/status.maps_errors) or a crashed
task. (asyncpg's own "Failed to restore the pool connection floor" warning carries a
traceback while PostgreSQL is down: expected, not an alarm.)"""


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------- server
class ServerProcess:
    """`python -m potato_runs.cli serve --dsn ...` as a child process (stderr to a log
    file), restartable on the same port so clients' channels reconnect by themselves."""

    def __init__(self, dsn: str, log_dir: Path, **env: str) -> None:
        self.dsn = dsn
        self.log = log_dir / "server.log"
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false",
                    "POTATO_ADMIN_TOKEN": ADMIN_TOKEN, "POTATO_INVARIANT_CHECK_INTERVAL": "0",
                    "POTATO_TOTALS_RECONCILE_AT": "", "POTATO_HEALTH_PROBE_INTERVAL": "1",
                    "POTATO_LOG_LEVEL": "INFO", **env}
        self.env.pop("POTATO_DSN", None)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> float:
        """Starts the server (on the previous port after the first start); returns the
        seconds until it printed its address."""
        t0 = now()
        with self.log.open("a") as log:
            log.write(f"--- start on port {self.port} ---\n")
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "potato_runs.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--dsn", app_dsn(self.dsn),
                "--migrate-dsn", self.dsn,   # least privilege: serves as potato_app
                stdout=asyncio.subprocess.PIPE, stderr=log, env=self.env)
        line = await self.read_line(START_BOUND)
        assert "serving on" in line, (line, self.log_tail())
        self.port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        return now() - t0

    async def read_line(self, bound: float) -> str:
        """The next stdout line (empty at EOF), within `bound` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), bound)).decode()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, bound: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), bound)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait_exit(30)

    async def stop(self) -> int:
        """SIGTERM and the exit code (graceful shutdown)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.signal(signal.SIGTERM)
        return await self.wait_exit(60)

    async def close(self) -> None:
        """Teardown: no child left behind, whatever happened."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait_exit(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alarms(self) -> list[str]:
        """Log lines that mean a call ended in INTERNAL (or a handler crashed)."""
        return [ln for ln in self.log_text().splitlines() if any(a in ln for a in LOG_ALARMS)]


# --------------------------------------------------------------------------- model
@dataclass
class WriteRecord:
    seq: int
    user: str
    dates: tuple[dt.date, ...]
    effect: bool   # True: marks the dates, False: unmarks them
    before: tuple[frozenset[bool], ...]
    outcome: str   # "ok", "not_applied", "unknown"


@dataclass
class Model:
    """What the database may hold for each owned user (see the module docstring)."""

    states: dict[tuple[str, dt.date], frozenset[bool]] = field(default_factory=dict)
    last_change: dict[tuple[str, dt.date], int] = field(default_factory=dict)
    writes: list[WriteRecord] = field(default_factory=list)
    users: set[str] = field(default_factory=set)

    def state(self, user: str, day: dt.date) -> frozenset[bool]:
        return self.states.get((user, day), frozenset({False}))

    def record(self, user: str, dates: Sequence[dt.date], effect: bool, outcome: str) -> None:
        seq = len(self.writes)
        before = tuple(self.state(user, d) for d in dates)
        self.writes.append(WriteRecord(seq, user, tuple(dates), effect, before, outcome))
        if outcome == "not_applied":
            return
        for d, prev in zip(dates, before, strict=True):
            self.states[(user, d)] = (frozenset({effect}) if outcome == "ok"
                                      else prev | {effect})
            self.last_change[(user, d)] = seq

    def lost(self, facts: dict[str, set[dt.date]]) -> list[str]:
        """(user, date) whose database state is not one the model allows: a lost
        acknowledged write, a write applied although reported not_applied, or a mark
        nobody sent."""
        out = []
        for (user, day), allowed in self.states.items():
            marked = day in facts.get(user, set())
            if marked not in allowed:
                out.append(f"{user} {day}: {'marked' if marked else 'unmarked'} in the "
                           f"database, the acknowledged writes say otherwise")
        for user in self.users:
            for day in facts.get(user, set()):
                if (user, day) not in self.states:
                    out.append(f"{user} {day}: marked, never written")
        return out

    def not_applied_verified(self, facts: dict[str, set[dt.date]]) -> int:
        """not_applied writes that would have been visible (every date was certainly in
        the other state and nothing changed it later): the final check covered them."""
        count = 0
        for w in self.writes:
            if w.outcome != "not_applied":
                continue
            if all(b == frozenset({not w.effect}) and
                   self.last_change.get((w.user, d), -1) < w.seq
                   for d, b in zip(w.dates, w.before, strict=True)):
                assert all((d in facts.get(w.user, set())) is (not w.effect) for d in w.dates), w
                count += 1
        return count

    def torn_backfills(self, facts: dict[str, set[dt.date]]) -> list[str]:
        """BackfillDays with an unknown outcome are one transaction: of their dates that
        were certainly unmarked before and untouched after, all or none are marked."""
        out = []
        for w in self.writes:
            if w.outcome != "unknown" or len(w.dates) < 2 or not w.effect:
                continue
            mine = [d for d, b in zip(w.dates, w.before, strict=True)
                    if b == frozenset({False}) and self.last_change.get((w.user, d)) == w.seq]
            marked = {d in facts.get(w.user, set()) for d in mine}
            if len(marked) > 1:
                out.append(f"{w.user} backfill #{w.seq}: {len(mine)} dates, partly applied")
        return out


# --------------------------------------------------------------------------- load
def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    trailers = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
    if raw is None:
        return None
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


@dataclass
class Calls:
    """Every call's status code, and when the OK ones started and ended."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    oks: list[tuple[float, float]] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list))
    failures: list[tuple[float, float, str]] = field(default_factory=list)
    """(start, end, code) of every call that was not OK."""
    acked_writes: int = 0

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from `t` to the end of the first OK call that started at or after it."""
        first = None
        for s, e in reversed(self.oks):   # appended as they end: stop at the first before t
            if e < t:
                break
            if s >= t:
                first = e
        return None if first is None else first - t

    async def wait_ok_after(self, t: float, bound: float = RECOVERY_BOUND) -> float:
        """Polls (10 ms) until a call started at or after `t` succeeded; its delay."""
        deadline = now() + bound
        while (found := self.first_ok_after(t)) is None:
            assert now() < deadline, f"no OK call within {bound} s after the fault: {self.codes}"
            await asyncio.sleep(0.01)
        return found


class Workload:
    """`workers` concurrent writers/readers over `channels` channels; worker i owns
    `users_per_worker` users of its own and is their only writer."""

    def __init__(self, target: str, workers: int, users_per_worker: int, *,
                 channels: int | None = None, backfill_size: tuple[int, int] = (2, 30),
                 reads: float = 0.15, seed: int = SEED, backoff: float = 0.02) -> None:
        self.target = target
        self.backoff = backoff
        self.workers = workers
        self.channels = channels or workers
        self.backfill_size = backfill_size
        self.reads = reads
        self.seed = seed
        rng = random.Random(seed)
        self.owned = [[str(uuid.UUID(int=rng.getrandbits(128), version=4))
                       for _ in range(users_per_worker)] for _ in range(workers)]
        self.model = Model(users={u for us in self.owned for u in us})
        self.calls = Calls()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Runs until `stopping` is set; every worker finishes its current call."""
        chans = [grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
                 for _ in range(self.channels)]
        try:
            await asyncio.gather(*(self._worker(i, chans[i % len(chans)])
                                   for i in range(self.workers)))
        finally:
            for ch in chans:
                await ch.close()

    async def _worker(self, index: int, channel: grpc.aio.Channel) -> None:
        rng = random.Random(self.seed * 1000 + index)
        runs = pb_grpc.RunsServiceStub(channel)
        totals = totals_grpc.TotalsServiceStub(channel)
        users = self.owned[index]
        while not self.stopping.is_set():
            user = rng.choice(users)
            roll = rng.random()
            dates: list[dt.date] = []
            effect = True
            t0 = now()
            try:
                if roll < self.reads:
                    if roll < self.reads / 3:
                        await runs.GetActiveRun(pb.GetActiveRunRequest(user_id=user),
                                                timeout=CALL_TIMEOUT)
                    elif roll < 2 * self.reads / 3:
                        await runs.ListRuns(pb.ListRunsRequest(user_id=user, page_size=50),
                                            timeout=CALL_TIMEOUT)
                    else:
                        await totals.GetTotals(totals_pb.GetTotalsRequest(user_id=user),
                                               timeout=CALL_TIMEOUT)
                else:
                    dates, effect = self._choose_write(rng, user, roll)
                    await self._send(runs, user, dates, effect)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
                self.calls.samples.setdefault(code, str(exc.details())[:200])
                if dates:
                    info = error_info(exc)
                    outcome = info.metadata.get("write_outcome", "") if info else ""
                    self.calls.outcomes[outcome or "none"] += 1
                    self.model.record(user, dates,
                                      effect, "not_applied" if outcome == "not_applied"
                                      else "unknown")
            self.calls.codes[code] += 1
            self.calls.latency[code].append(now() - t0)
            if code == "OK":
                self.calls.oks.append((t0, now()))
                if dates:
                    self.calls.acked_writes += 1
                    self.model.record(user, dates, effect, "ok")
            else:
                self.calls.failures.append((t0, now(), code))
                await asyncio.sleep(self.backoff)   # pacing: a failing client backs off

    def _choose_write(self, rng: random.Random, user: str,
                      roll: float) -> tuple[list[dt.date], bool]:
        """Mostly writes that change something (mark an unmarked day, unmark a marked
        one), so a write applied or lost shows in the facts."""
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(WINDOW))
        if roll < self.reads + 0.12:
            n = rng.randint(*self.backfill_size)
            start = rng.randrange(WINDOW - min(n, WINDOW - 1))
            return sorted({FIRST_DAY + dt.timedelta(days=start + k) for k in range(n)
                           if start + k < WINDOW}), True
        maybe_marked = True in self.model.state(user, day)
        return [day], not maybe_marked if rng.random() < 0.8 else rng.random() < 0.6

    @staticmethod
    async def _send(runs: pb_grpc.RunsServiceStub, user: str, dates: list[dt.date],
                    effect: bool) -> None:
        if not effect:
            await runs.UnmarkDay(pb.UnmarkDayRequest(user_id=user,
                                                     local_date=dates[0].isoformat()),
                                 timeout=CALL_TIMEOUT)
        elif len(dates) == 1:
            await runs.MarkDay(pb.MarkDayRequest(user_id=user, local_date=dates[0].isoformat(),
                                                 time_zone="UTC"), timeout=CALL_TIMEOUT)
        else:
            await runs.BackfillDays(pb.BackfillDaysRequest(
                user_id=user, local_dates=[d.isoformat() for d in dates], time_zone="UTC"),
                timeout=CALL_TIMEOUT)


@contextlib.asynccontextmanager
async def running(load: Workload) -> AsyncIterator[Workload]:
    """The workload runs inside the block and is stopped (and awaited) at its end."""
    task = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        load.stopping.set()
        await asyncio.wait_for(task, CALL_TIMEOUT + 30)


# --------------------------------------------------------------------------- verify
@dataclass
class Verdict:
    lost: list[str]
    torn: list[str]
    not_applied_verified: int
    violations: list[str]
    projection_drift: list[str]
    totals_drift: int

    @property
    def clean(self) -> bool:
        return not (self.lost or self.torn or self.violations or self.projection_drift
                    or self.totals_drift)


async def facts_of(conn: asyncpg.Connection, users: Iterable[str]) -> dict[str, set[dt.date]]:
    rows = await conn.fetch("SELECT user_id, checkin_date FROM daily_checkins "
                            "WHERE user_id = ANY($1::uuid[])", [uuid.UUID(u) for u in users])
    facts: dict[str, set[dt.date]] = collections.defaultdict(set)
    for r in rows:
        facts[str(r["user_id"])].add(r["checkin_date"])
    return facts


async def verify(dsn: str, model: Model) -> Verdict:
    """The database against the model, then the whole database: every invariant query
    (the checker), the runs projection against a rebuild from the facts (the pure
    domain projection) and the stored totals against the computed ones."""
    conn = await asyncpg.connect(dsn)
    try:
        facts = await facts_of(conn, model.users)
        violations = []
        for code in INVARIANT_QUERIES:
            for r in await conn.fetch(invariant_sql(code, False)):
                violations.append(f"{code} {r[0]} {r[1]}")
        all_facts: dict[uuid.UUID, list[dt.date]] = collections.defaultdict(list)
        for r in await conn.fetch("SELECT user_id, checkin_date FROM daily_checkins"):
            all_facts[r["user_id"]].append(r["checkin_date"])
        stored: dict[uuid.UUID, list[tuple[dt.date, dt.date, int, bool]]] = \
            collections.defaultdict(list)
        for r in await conn.fetch("SELECT user_id, start_date, end_date, day_count, active "
                                  "FROM runs ORDER BY user_id, start_date"):
            stored[r["user_id"]].append((r["start_date"], r["end_date"], r["day_count"],
                                         r["active"]))
        drift = []
        for user in set(all_facts) | set(stored):
            rebuilt = [(x.start_date, x.end_date, (x.end_date - x.start_date).days + 1, x.active)
                       for x in runs_from_dates(user, all_facts.get(user, []))]
            if rebuilt != stored.get(user, []):
                drift.append(f"{user}: stored {stored.get(user)} rebuilt {rebuilt}")
        totals_drift = int(await conn.fetchval(TOTALS_DRIFT))
    finally:
        await conn.close()
    return Verdict(lost=model.lost(facts), torn=model.torn_backfills(facts),
                   not_applied_verified=model.not_applied_verified(facts),
                   violations=violations, projection_drift=drift, totals_drift=totals_drift)


def assert_clean(verdict: Verdict, server: ServerProcess | None = None) -> None:
    tail = f"\nserver log:\n{server.log_tail()}" if server is not None else ""
    assert not verdict.lost, f"lost or phantom writes: {verdict.lost[:10]}{tail}"
    assert not verdict.torn, f"torn backfills: {verdict.torn[:10]}{tail}"
    assert not verdict.violations, f"checker: {verdict.violations[:10]}{tail}"
    assert not verdict.projection_drift, f"projection != rebuild: {verdict.projection_drift[:5]}"
    assert verdict.totals_drift == 0, f"stored totals drift: {verdict.totals_drift} rows"


# --------------------------------------------------------------------------- report
HEADER = ("| scenario | calls | codes seen | writes acked | lost | not_applied verified "
          "| recovery | notes |\n|---|---|---|---|---|---|---|---|")


def report(scenario: str, calls: Calls, verdict: Verdict | None, recovery: str,
           notes: str = "") -> str:
    """One row of the suite's table: printed (pytest -s) and appended to
    $POTATO_FAULTS_REPORT when set."""
    codes = ", ".join(f"{k}={v}" for k, v in calls.codes.most_common())
    outcomes = ", ".join(f"{k}={v}" for k, v in calls.outcomes.most_common())
    if outcomes:
        notes = f"write_outcome: {outcomes}" + (f"; {notes}" if notes else "")
    lost = "n/a" if verdict is None else str(len(verdict.lost) + len(verdict.torn))
    verified = "n/a" if verdict is None else str(verdict.not_applied_verified)
    row = (f"| {scenario}{'' if FULL else ' (default subset)'} | {calls.total} | {codes} "
           f"| {calls.acked_writes} | {lost} | {verified} | {recovery} | {notes} |")
    print(f"\n{HEADER}\n{row}")
    path = os.environ.get("POTATO_FAULTS_REPORT")
    if path:
        target = Path(path)
        with target.open("a") as f:
            if not target.exists() or target.stat().st_size == 0:
                f.write(HEADER + "\n")
            f.write(row + "\n")
    return row


def seconds(values: Sequence[float]) -> str:
    if not values:
        return "none measured"
    return (f"max {max(values):.2f} s, median {statistics.median(values):.2f} s "
            f"over {len(values)}")
