"""Online shadow comparisons: one path served, the other compared after the response.

Each flag has its pair of read paths (`ShadowPaths`): ff.potato.runs_v2 serves legacy
and compares the projection (the v1 reads); ff.potato.totals_v2 serves `computed` and
compares `stored` (the TotalsService reads). Below, "legacy" is the served path and
"projection" the compared one, as the columns of `shadow_mismatches` name them.

For a user in a flag's shadow sample the read is answered by the served path. After the
response has been sent (the servicer submits from the RPC's done callback), a worker
computes the other path's answer, at the `now` the request was answered at, and
compares the two normalized answers:

- equal: a `match`;
- different: both paths are read again in one REPEATABLE READ, READ ONLY transaction
  (one snapshot, one "now"), so a write that landed between the served read and the
  shadow read is not taken for a mismatch; only a difference there is a `mismatch`,
  stored with both answers (capped) and counted;
- the queue is full (or the comparer is stopping): `dropped`, counted;
- the shadow read failed (database down, deadline): `error`, counted.

Concurrency is bounded (`workers`), and so is the queue (`queue_size`). Counts go to
`shadow_comparisons` in batches (one statement per flush, every `flush_interval`
seconds and on stop) and to the OpenTelemetry counter `potato.shadow.comparisons`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError
from potato_runs.domain.flags import RUNS_V2
from potato_runs.domain.reads import ReadSource, normalize
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.read_paths import ReadPaths
from potato_runs.storage.shadow_repo import CountKey, Mismatch, ShadowRepository

log = logging.getLogger(__name__)

MATCH, MISMATCH, DROPPED, ERROR = "match", "mismatch", "dropped", "error"
FINAL_FLUSH_TIMEOUT = 2.0
"""Seconds the flush on stop may take (shutdown must never hang on the database)."""


T = TypeVar("T")


class ShadowQuery(Protocol):
    """A read that can be answered from either path of its flag (service/v1_runs.py,
    service/totals_service.py); `reader` is the flag's reader, `source` its path."""

    @property
    def method(self) -> str: ...

    @property
    def user_id(self) -> uuid.UUID: ...

    async def answer(self, reader: Any, source: Any, now: dt.datetime) -> Any: ...


class SnapshotReads(Protocol):
    """A flag's read paths on the comparer's pool (storage/read_paths.ReadPaths,
    storage/totals_reads.TotalsReads)."""

    async def read(self, deadline: Deadline, fn: Callable[[Any], Awaitable[T]]) -> T: ...

    async def snapshot(self, deadline: Deadline, fn: Callable[[Any], Awaitable[T]]) -> T: ...


@dataclass(frozen=True)
class ShadowPaths:
    """What the comparer needs to know of one flag: its reads, the path served, the path
    compared, and the normalization both answers go through."""

    reads: SnapshotReads
    served: Any
    compared: Any
    normalize: Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class ShadowJob:
    flag: str
    query: ShadowQuery
    served: Any
    """The answer the caller got (the served path); normalized by the worker, off the
    response path."""
    now: dt.datetime | None = None
    """The `now` the served answer was computed at (the clock may move before the
    comparison runs); None: the comparer's clock."""


@dataclass(frozen=True)
class ShadowSettings:
    workers: int = 4
    queue_size: int = 1000
    mismatch_cap: int = 10_000
    timeout: float = 5.0
    """Seconds one comparison (both reads) may take."""
    flush_interval: float = 1.0
    drain_timeout: float = 2.0
    """On stop: seconds to let queued comparisons finish before dropping them."""


class ShadowComparer:
    def __init__(self, reads: ReadPaths, repo: ShadowRepository, clock: Clock,
                 telemetry: Telemetry, settings: ShadowSettings | None = None) -> None:
        self._paths: dict[str, ShadowPaths] = {RUNS_V2: ShadowPaths(
            reads, ReadSource.LEGACY, ReadSource.PROJECTION, normalize)}
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry
        self.settings = settings or ShadowSettings()
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._counts: dict[CountKey, int] = {}
        self._mismatches: collections.deque[Mismatch] = collections.deque(
            maxlen=max(self.settings.mismatch_cap, 1))
        self.totals: collections.Counter[str] = collections.Counter()
        """Results since start, in this process (match, mismatch, dropped, error)."""

    def register(self, flag: str, paths: ShadowPaths) -> None:
        """Compares the reads of `flag` with `paths` (ff.potato.runs_v2 is built in)."""
        self._paths[flag] = paths

    # -- submission ---------------------------------------------------------------

    def submit(self, job: ShadowJob) -> None:
        """Queues a comparison; never blocks, never raises. Safe from any thread (gRPC
        done callbacks): the job is handed to the comparer's loop."""
        loop = self._loop
        if loop is None or self._closed:
            self._record(job.flag, job.query.method, DROPPED)
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, job)
        except RuntimeError:   # the loop is closed: shutting down
            self._record(job.flag, job.query.method, DROPPED)

    def _enqueue(self, job: ShadowJob) -> None:
        if self._queue is None or self._closed:
            self._record(job.flag, job.query.method, DROPPED)
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._record(job.flag, job.query.method, DROPPED)

    def pending(self) -> int:
        """Comparisons waiting in the queue (not those a worker holds)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def idle(self) -> None:
        """Returns once every queued comparison has finished (benchmarks, tests)."""
        if self._queue is not None:
            await self._queue.join()

    # -- comparison ---------------------------------------------------------------

    async def compare(self, job: ShadowJob) -> str:
        """One comparison; returns its result (also recorded)."""
        q = job.query
        paths = self._paths.get(job.flag)
        if paths is None:
            log.error("no shadow paths registered for %s", job.flag)
            self._record(job.flag, q.method, ERROR)
            return ERROR
        deadline = Deadline.after(self.settings.timeout)
        try:
            now = job.now or self._clock.now()
            projection = paths.normalize(await paths.reads.read(
                deadline, lambda r: q.answer(r, paths.compared, now)))
            legacy = paths.normalize(job.served)
            if projection != legacy:
                now = job.now or self._clock.now()

                async def both(r: Any) -> tuple[dict[str, Any], dict[str, Any]]:
                    return (paths.normalize(await q.answer(r, paths.served, now)),
                            paths.normalize(await q.answer(r, paths.compared, now)))

                legacy, projection = await paths.reads.snapshot(deadline, both)
        except DomainError as exc:
            log.warning("shadow comparison of %s failed: %s", q.method, exc)
            result = ERROR
        else:
            result = MATCH if projection == legacy else MISMATCH
            if result == MISMATCH:
                self._mismatches.append(Mismatch(
                    user_id=q.user_id, flag=job.flag, method=str(q.method), legacy=legacy,
                    projection=projection, observed_at=self._clock.now()))
        self._record(job.flag, q.method, result)
        return result

    def _record(self, flag: str, method: str, result: str) -> None:
        now = self._clock.now()
        key = CountKey(flag, str(method), result, now.replace(minute=0, second=0, microsecond=0))
        self._counts[key] = self._counts.get(key, 0) + 1
        self.totals[result] += 1
        self._telemetry.record_shadow(flag, str(method), result)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await self.compare(job)
            except asyncio.CancelledError:
                self._record(job.flag, job.query.method, DROPPED)
                raise
            except Exception:   # a worker must outlive any one comparison
                log.exception("shadow comparison crashed")
                self._record(job.flag, job.query.method, ERROR)
            finally:
                self._queue.task_done()

    # -- persistence --------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Writes the pending counts and mismatches (one statement). On failure they
        are kept (still bounded) for the next flush."""
        if not self._counts and not self._mismatches:
            return
        counts, self._counts = self._counts, {}
        mismatches = list(self._mismatches)
        self._mismatches.clear()
        try:
            await self._repo.flush(counts, mismatches, self.settings.mismatch_cap,
                                   Deadline.after(timeout or self.settings.timeout))
        except DomainError as exc:
            log.warning("could not store shadow comparison counts: %s", exc)
            for k, n in counts.items():
                self._counts[k] = self._counts.get(k, 0) + n
            # Back in order; past the cap the oldest go (the deque keeps the newest).
            newer = list(self._mismatches)
            self._mismatches.clear()
            self._mismatches.extend([*mismatches, *newer])

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("shadow flush failed")

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Starts the workers and the flusher on the running loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._tasks = [asyncio.create_task(self._work(), name=f"shadow-worker-{i}")
                       for i in range(self.settings.workers)]
        self._flusher = asyncio.create_task(self._flush_loop(), name="shadow-flush")

    async def stop(self) -> None:
        """Lets queued comparisons finish for up to drain_timeout, drops (and counts)
        the rest, then flushes once. Bounded: never hangs shutdown."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout):
                    await self._queue.join()
        tasks = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                self._record(job.flag, job.query.method, DROPPED)
        with contextlib.suppress(Exception):
            await self.flush(timeout=min(self.settings.timeout, FINAL_FLUSH_TIMEOUT))
