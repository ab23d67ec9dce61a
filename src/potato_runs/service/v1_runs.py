"""The legacy v1 use cases.

Writes go through the v2 write path (RunsService: same rules, same errors, facts and
projection in one transaction), so the projection never falls behind whichever
contract a caller writes through. Reads ask the flag ff.potato.runs_v2, per user:

- V2: answered from the projection;
- LEGACY: answered by legacy (gaps and islands over the check-ins);
- SHADOW: answered by legacy, and a comparison with the projection is handed to the
  ShadowComparer, to run after the response has been sent (`Served.after_response`).
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from potato_runs.clock import Clock
from potato_runs.domain import reads
from potato_runs.domain.flags import RUNS_V2, FlagEvaluator, Variant
from potato_runs.domain.model import MarkResult, UnmarkResult
from potato_runs.domain.reads import (
    Answer,
    CurrentRunAnswer,
    ReadMethod,
    ReadSource,
    RunsAnswer,
    StatsAnswer,
)
from potato_runs.service.commands import CallContext, MarkDay, UnmarkDay
from potato_runs.service.runs_service import RunsService
from potato_runs.service.shadow import ShadowComparer, ShadowJob
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.read_paths import Reader, ReadPaths

A = TypeVar("A", bound=Answer)
A_co = TypeVar("A_co", bound=Answer, covariant=True)


class V1Query(Protocol[A_co]):
    @property
    def method(self) -> ReadMethod: ...

    @property
    def user_id(self) -> uuid.UUID: ...

    async def answer(self, reader: Reader, source: ReadSource, now: dt.datetime) -> A_co: ...


@dataclass(frozen=True)
class CurrentRunQuery:
    user_id: uuid.UUID
    method: ReadMethod = ReadMethod.GET_CURRENT_RUN

    async def answer(self, reader: Reader, source: ReadSource,
                     now: dt.datetime) -> CurrentRunAnswer:
        return reads.current_run_answer(await reader.current(source, self.user_id), now)


@dataclass(frozen=True)
class ListRunsQuery:
    user_id: uuid.UUID
    limit: int
    method: ReadMethod = ReadMethod.LIST_RUNS

    async def answer(self, reader: Reader, source: ReadSource, now: dt.datetime) -> RunsAnswer:
        return reads.runs_answer(await reader.runs(source, self.user_id, self.limit))


@dataclass(frozen=True)
class StatsQuery:
    user_id: uuid.UUID
    method: ReadMethod = ReadMethod.GET_STATS

    async def answer(self, reader: Reader, source: ReadSource, now: dt.datetime) -> StatsAnswer:
        return reads.stats_answer(await reader.stats(source, self.user_id), now)


@dataclass(frozen=True)
class Served(Generic[A]):
    """An answer, the path that produced it, and what to run once the response has
    been sent (the shadow comparison of a SHADOW user; None otherwise)."""

    answer: A
    source: ReadSource
    after_response: Callable[[], None] | None = None


class V1RunsService:
    def __init__(self, runs: RunsService, paths: ReadPaths, flags: FlagEvaluator, clock: Clock,
                 shadow: ShadowComparer | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self._runs = runs
        self._telemetry = telemetry or Telemetry()
        self._paths = paths
        self.flags = flags
        """Which variant of ff.potato.runs_v2 each user gets (replaceable at run time)."""
        self._clock = clock
        self._shadow = shadow

    async def mark_day(self, cmd: MarkDay, ctx: CallContext) -> MarkResult:
        return await self._runs.mark_day(cmd, ctx)

    async def unmark_day(self, cmd: UnmarkDay, ctx: CallContext) -> UnmarkResult:
        return await self._runs.unmark_day(cmd, ctx)

    async def get_current_run(self, user_id: uuid.UUID,
                              ctx: CallContext) -> Served[CurrentRunAnswer]:
        return await self._serve(CurrentRunQuery(user_id), ctx, "v1.GetCurrentRun")

    async def list_runs(self, user_id: uuid.UUID, limit: int,
                        ctx: CallContext) -> Served[RunsAnswer]:
        return await self._serve(ListRunsQuery(user_id, limit), ctx, "v1.ListRuns")

    async def get_stats(self, user_id: uuid.UUID, ctx: CallContext) -> Served[StatsAnswer]:
        return await self._serve(StatsQuery(user_id), ctx, "v1.GetStats")

    async def _serve(self, query: V1Query[A], ctx: CallContext, operation: str) -> Served[A]:
        variant = self.flags.variant(RUNS_V2, query.user_id)
        source = ReadSource.PROJECTION if variant is Variant.V2 else ReadSource.LEGACY
        now = self._clock.now()
        with self._telemetry.timed(operation):
            answer = await self._paths.read(ctx.deadline,
                                            lambda r: query.answer(r, source, now))
        after = None
        if variant is Variant.SHADOW and self._shadow is not None:
            after = functools.partial(self._shadow.submit,
                                      ShadowJob(RUNS_V2, query, answer, now))
        return Served(answer, source, after)
