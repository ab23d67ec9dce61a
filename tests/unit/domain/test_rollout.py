"""The GO / NO-GO verdict: every gate, its figure, and how batches add up."""

from __future__ import annotations

import uuid

import pytest

from potato_runs.domain import rollout
from potato_runs.domain.rollout import (
    DIFF_CLASSES,
    ClassCount,
    DiffBatch,
    PopulationDiff,
    ShadowStats,
    verdict,
)

U = [uuid.UUID(int=i) for i in range(20)]


def clean(users: int = 100) -> PopulationDiff:
    diff = PopulationDiff()
    diff.add(DiffBatch(users, 0, users * 10, (), U[0]))
    return diff


def shadow(match: int, mismatch: int = 0, error: int = 0, dropped: int = 0) -> ShadowStats:
    return ShadowStats({("GetCurrentRun", "match"): match, ("GetCurrentRun", "mismatch"): mismatch,
                        ("ListRuns", "error"): error, ("ListRuns", "dropped"): dropped})


def gates(v: rollout.Verdict) -> dict[str, bool]:
    return {g.name: g.passed for g in v.gates}


def test_go_when_every_gate_passes() -> None:
    v = verdict(clean(), shadow(1000), 0)
    assert v.go and v.label == "GO"
    assert gates(v) == {"population_diff": True, "shadow_mismatch_rate": True, "invariants": True}


def test_one_population_difference_is_no_go() -> None:
    diff = clean()
    diff.add(DiffBatch(10, 1, 5, (ClassCount("missing_run", 1, (U[3],)),), U[4]))
    v = verdict(diff, shadow(5000), 0)
    assert not v.go and v.label == "NO-GO"
    assert gates(v)["population_diff"] is False
    assert "1 users different of 110 users" in v.gates[0].figure


@pytest.mark.parametrize(("match", "mismatch", "error", "passed"), [
    (999, 1, 0, True),       # 0.1 % exactly: at or below the threshold
    (998, 2, 0, False),      # 0.2 %
    (998, 1, 1, False),      # an error counts against v2
    (998, 0, 0, False),      # 998 comparisons: too few
    (0, 0, 0, False),        # nothing compared
])
def test_the_shadow_gate(match: int, mismatch: int, error: int, passed: bool) -> None:
    v = verdict(clean(), shadow(match, mismatch, error, dropped=10_000), 0)
    assert gates(v)["shadow_mismatch_rate"] is passed and v.go is passed


def test_dropped_comparisons_are_not_comparisons() -> None:
    s = shadow(500, dropped=5000)
    assert s.compared == 500
    v = verdict(clean(), s, 0)
    assert not v.go and "too few comparisons" in v.gates[1].figure


def test_gate_overrides() -> None:
    s = shadow(95, 5)
    assert not verdict(clean(), s, 0).go
    assert verdict(clean(), s, 0, max_mismatch_rate=0.05, min_comparisons=100).go
    assert not verdict(clean(), s, 0, max_mismatch_rate=0.0499, min_comparisons=100).go


def test_invariant_violations_are_no_go() -> None:
    v = verdict(clean(), shadow(2000), 3, violations_truncated=True)
    assert not v.go and gates(v)["invariants"] is False and v.gates[2].figure == "3+ violations"


def test_batches_add_up_with_five_examples_per_class() -> None:
    diff = PopulationDiff(sample=30)
    diff.add(DiffBatch(10, 4, 100, (ClassCount("overlap", 4, tuple(U[:4])),), U[9]))
    diff.add(DiffBatch(10, 3, 50, (ClassCount("overlap", 3, tuple(U[10:13])),
                                   ClassCount("extra_run", 1, (U[11],))), U[19]))
    assert (diff.users_scanned, diff.users_different, diff.checkins_scanned) == (20, 7, 150)
    assert diff.counts["overlap"] == 7 and diff.examples["overlap"] == [*U[:4], U[10]]
    assert diff.rate("overlap") == pytest.approx(0.35) and diff.rate("missing_run") == 0
    assert "(sample)" in verdict(diff, shadow(1000), 0).gates[0].figure


def test_class_counts_keep_the_documented_order_and_drop_empty_classes() -> None:
    rows = [("overlap", 2, [U[1], U[2]]), ("missing_run", 0, []),
            ("day_count_mismatch", 7, U[:7])]
    got = rollout.class_counts(rows)
    assert [c.name for c in got] == ["day_count_mismatch", "overlap"]
    assert got[0].examples == tuple(U[:5])
    assert set(DIFF_CLASSES) == {"day_count_mismatch", "missing_run", "extra_run", "overlap",
                                 "uncovered_day", "active_mismatch", "current_streak_mismatch"}
