"""The TotalsService use cases: lifetime and monthly totals of one user.

Each read asks the flag ff.potato.totals_v2, per user (the same semantics as
ff.potato.runs_v2 for the v1 reads):

- V2: answered from the stored totals (`run_totals`, `user_totals`);
- LEGACY: computed on read from the check-ins;
- SHADOW: computed, and a comparison with the stored answer is handed to the
  ShadowComparer, to run after the response has been sent (`Served.after_response`),
  at the same `now`.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from potato_runs.clock import Clock
from potato_runs.domain import rules
from potato_runs.domain.flags import TOTALS_V2, FlagEvaluator, Variant
from potato_runs.domain.totals_answers import (
    MonthlyPage,
    TotalsAnswer,
    TotalsAnswers,
    TotalsMethod,
    TotalsSource,
    monthly_page,
    page_range,
    totals_answer,
)
from potato_runs.service.commands import CallContext
from potato_runs.service.shadow import ShadowComparer, ShadowJob
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.totals_reads import TotalsReader, TotalsReads

A = TypeVar("A", bound=TotalsAnswers)
A_co = TypeVar("A_co", bound=TotalsAnswers, covariant=True)

DEFAULT_PAGE_SIZE = 24
"""Months per ListMonthlyTotals page when the request says 0 (two years)."""
MAX_PAGE_SIZE = 120
"""Most months per page (ten years); larger requests are capped."""


@dataclass(frozen=True)
class ListMonthlyTotals:
    """A validated ListMonthlyTotals request (transport/totals_convert.py)."""

    user_id: uuid.UUID
    page_size: int
    start: int | None
    """yyyymm of start_month (inclusive), or None."""
    end: int | None
    """yyyymm of end_month (inclusive), or None."""
    after: int | None = None
    """The last month of the previous page (from the page token), or None."""


class TotalsQuery(Protocol[A_co]):
    @property
    def method(self) -> TotalsMethod: ...

    @property
    def user_id(self) -> uuid.UUID: ...

    async def answer(self, reader: TotalsReader, source: TotalsSource,
                     now: dt.datetime) -> A_co: ...


@dataclass(frozen=True)
class GetTotalsQuery:
    user_id: uuid.UUID
    method: TotalsMethod = TotalsMethod.GET_TOTALS

    async def answer(self, reader: TotalsReader, source: TotalsSource,
                     now: dt.datetime) -> TotalsAnswer:
        return totals_answer(await reader.lifetime(source, self.user_id), now)


@dataclass(frozen=True)
class MonthlyTotalsQuery:
    request: ListMonthlyTotals
    method: TotalsMethod = TotalsMethod.LIST_MONTHLY_TOTALS

    @property
    def user_id(self) -> uuid.UUID:
        return self.request.user_id

    async def answer(self, reader: TotalsReader, source: TotalsSource,
                     now: dt.datetime) -> MonthlyPage:
        req = self.request
        rows = await reader.months(source, req.user_id,
                                   page_range(req.start, req.end, req.after),
                                   req.page_size + 1)
        return monthly_page(rows, req.page_size, functools.partial(
            rules.encode_month_token, req.user_id, req.start, req.end))


@dataclass(frozen=True)
class Served(Generic[A]):
    """An answer, the path that produced it, and what to run once the response has
    been sent (the shadow comparison of a SHADOW user; None otherwise)."""

    answer: A
    source: TotalsSource
    after_response: Callable[[], None] | None = None


class TotalsService:
    def __init__(self, reads: TotalsReads, flags: FlagEvaluator, clock: Clock,
                 shadow: ShadowComparer | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self._reads = reads
        self._telemetry = telemetry or Telemetry()
        self.flags = flags
        """Which variant of ff.potato.totals_v2 each user gets (replaceable at run time)."""
        self._clock = clock
        self._shadow = shadow

    async def get_totals(self, user_id: uuid.UUID, ctx: CallContext) -> Served[TotalsAnswer]:
        return await self._serve(GetTotalsQuery(user_id), ctx, "GetTotals")

    async def list_monthly_totals(self, request: ListMonthlyTotals,
                                  ctx: CallContext) -> Served[MonthlyPage]:
        return await self._serve(MonthlyTotalsQuery(request), ctx, "ListMonthlyTotals")

    async def _serve(self, query: TotalsQuery[A], ctx: CallContext,
                     operation: str) -> Served[A]:
        variant = self.flags.variant(TOTALS_V2, query.user_id)
        source = TotalsSource.STORED if variant is Variant.V2 else TotalsSource.COMPUTED
        now = self._clock.now()
        with self._telemetry.timed(operation):
            answer = await self._reads.read(ctx.deadline,
                                            lambda r: query.answer(r, source, now))
        after = None
        if variant is Variant.SHADOW and self._shadow is not None:
            after = functools.partial(self._shadow.submit,
                                      ShadowJob(TOTALS_V2, query, answer, now))
        return Served(answer, source, after)
