"""Months on the wire, ListMonthlyTotals page tokens and pages, and the normalized
answers the shadow comparison of ff.potato.totals_v2 compares (pure)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from potato_runs.domain import rules
from potato_runs.domain.errors import ValidationCollector
from potato_runs.domain.totals_answers import (
    MonthRange,
    MonthRow,
    TotalsAnswer,
    month_before,
    monthly_page,
    normalize,
    page_range,
)

U = uuid.UUID("6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99")
T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("text", "key"), [("2025-01", 202501), ("2028-02", 202802),
                                           ("9999-12", 999912), ("0001-01", 101), ("", None)])
def test_months_parse_to_yyyymm(text: str, key: int | None) -> None:
    errors = ValidationCollector()
    assert rules.parse_month(text, errors, "start_month") == key
    assert errors.violations == []


@pytest.mark.parametrize("text", ["2025-13", "2025-00", "0000-01", "2025-1", "25-01",
                                  "2025-01-01", "2025-01\n", " 2025-01", "２０２５-01",
                                  "2025/01", "January"])
def test_other_month_spellings_are_refused(text: str) -> None:
    errors = ValidationCollector()
    assert rules.parse_month(text, errors, "end_month") is None
    assert [(v.field, v.reason.value) for v in errors.violations] == [("end_month",
                                                                       "INVALID_DATE")]


def test_month_before_crosses_year_ends() -> None:
    assert month_before(202501) == 202412
    assert month_before(202803) == 202802
    assert page_range(None, None, None) == MonthRange(None, None)
    assert page_range(202501, 202612, 202603) == MonthRange(202501, 202602)
    assert page_range(202501, 202512, 202603) == MonthRange(202501, 202512)
    assert page_range(202505, None, 202505).empty


@given(user=st.uuids(), start=st.one_of(st.none(), st.integers(101, 999912)),
       end=st.one_of(st.none(), st.integers(101, 999912)),
       year=st.integers(1, 9999), month=st.integers(1, 12))
def test_tokens_round_trip_and_are_bound_to_user_and_bounds(
        user: uuid.UUID, start: int | None, end: int | None, year: int, month: int) -> None:
    last = year * 100 + month
    token = rules.encode_month_token(user, start, end, last)
    errors = ValidationCollector()
    assert rules.decode_month_token(token, user, start, end, errors) == last
    assert errors.violations == []
    for other in ((uuid.UUID(int=user.int ^ 1), start, end), (user, (start or 0) + 1, end),
                  (user, start, (end or 0) + 1)):
        errors = ValidationCollector()
        assert rules.decode_month_token(token, *other, errors) is None
        assert [v.reason.value for v in errors.violations] == ["INVALID_PAGE_TOKEN"]


@pytest.mark.parametrize("token", ["x", "W" * 300, rules.encode_page_token(U, T.date()),
                                   rules.encode_user_cursor(U)])
def test_foreign_tokens_are_refused(token: str) -> None:
    errors = ValidationCollector()
    assert rules.decode_month_token(token, U, None, None, errors) is None
    assert [v.reason.value for v in errors.violations] == ["INVALID_PAGE_TOKEN"]
    # and a months token is no ListRuns token either
    errors = ValidationCollector()
    assert rules.decode_page_token(rules.encode_month_token(U, None, None, 202501), U,
                                   errors) is None
    assert errors.violations


def rows(*keys: int) -> list[MonthRow]:
    return [MonthRow(k, 2, 1, T) for k in keys]


def test_a_page_has_a_token_only_when_more_follow() -> None:
    def token(last: int) -> str:
        return f"after {last}"

    assert monthly_page(rows(202503, 202502), 2, token).next_page_token == ""
    page = monthly_page(rows(202503, 202502, 202501), 2, token)
    assert [m.month for m in page.months] == ["2025-03", "2025-02"]
    assert page.next_page_token == "after 202502"
    assert monthly_page([], 2, token).next_page_token == ""


def test_normalized_answers_leave_update_time_out() -> None:
    a = TotalsAnswer(10, 2, 7, 3, T)
    b = TotalsAnswer(10, 2, 7, 3, None)
    assert normalize(a) == normalize(b) == {"total_days": 10, "run_count": 2,
                                            "longest_run_days": 7, "current_streak_days": 3}
    assert normalize(a) != normalize(TotalsAnswer(10, 2, 7, 2, T))
    page = monthly_page(rows(202503), 5, str)
    assert normalize(page) == {"months": [{"month": "2025-03", "total_days": 2,
                                           "streak_days": 1}], "next_page_token": ""}
