"""Proto <-> domain conversion for potato.runs.v2.TotalsService."""

from __future__ import annotations

import uuid

from potato.runs.v2 import totals_service_pb2 as pb
from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.totals import month_label
from potato_runs.domain.totals_answers import MonthlyPage, MonthRow, TotalsAnswer
from potato_runs.service.totals_service import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ListMonthlyTotals,
)
from potato_runs.transport.convert import _timestamp


def get_totals(req: pb.GetTotalsRequest) -> uuid.UUID:
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    errors.raise_if_any()
    assert user_id is not None
    return user_id


def list_monthly_totals(req: pb.ListMonthlyTotalsRequest) -> ListMonthlyTotals:
    """Every violation at once; the page token is judged only against a valid user and
    valid bounds (it is bound to them)."""
    errors = ValidationCollector()
    user_id = rules.parse_user_id(req.user_id, errors)
    size = rules.page_size(req.page_size, errors, default=DEFAULT_PAGE_SIZE,
                           maximum=MAX_PAGE_SIZE)
    before = len(errors.violations)
    start = rules.parse_month(req.start_month, errors, "start_month")
    end = rules.parse_month(req.end_month, errors, "end_month")
    if start is not None and end is not None and start > end:
        errors.add("start_month", Reason.INVALID_RANGE,
                   f"start_month ({month_label(start)}) is after end_month ({month_label(end)})")
    months_ok = len(errors.violations) == before
    after = None
    if user_id is not None and months_ok:
        after = rules.decode_month_token(req.page_token, user_id, start, end, errors)
    errors.raise_if_any()
    assert user_id is not None
    return ListMonthlyTotals(user_id=user_id, page_size=size, start=start, end=end,
                             after=after)


def totals_to_proto(answer: TotalsAnswer) -> pb.GetTotalsResponse:
    return pb.GetTotalsResponse(totals=pb.Totals(
        total_days=answer.total_days, run_count=answer.run_count,
        longest_run_days=answer.longest_run_days,
        current_streak_days=answer.current_streak_days,
        update_time=_timestamp(answer.update_time)))


def month_to_proto(row: MonthRow) -> pb.MonthlyTotal:
    return pb.MonthlyTotal(month=row.month, total_days=row.total_days,
                           streak_days=row.streak_days, update_time=_timestamp(row.updated_at))


def monthly_to_proto(page: MonthlyPage) -> pb.ListMonthlyTotalsResponse:
    return pb.ListMonthlyTotalsResponse(monthly_totals=[month_to_proto(m) for m in page.months],
                                        next_page_token=page.next_page_token)
