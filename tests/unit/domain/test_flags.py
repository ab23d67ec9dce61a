"""The flag rules (domain/flags.py): bucketing, variants and percentages."""

from __future__ import annotations

import dataclasses
import random
import uuid
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from potato_runs.domain.flags import (
    BUCKETS,
    RUNS_V2,
    SHADOW_SALT,
    FlagState,
    Rule,
    Variant,
    bucket,
    evaluate,
    percent_to_basis_points,
    resolve,
)

users = st.uuids()
basis_points = st.integers(0, BUCKETS)
user_sets = st.frozensets(users, max_size=5)


@st.composite
def flags(draw: st.DrawFn) -> FlagState:
    return FlagState(name=draw(st.sampled_from([RUNS_V2, "ff.potato.totals_v2", "ff.x.y"])),
                     enabled=draw(st.booleans()),
                     rollout_basis_points=draw(basis_points),
                     shadow_basis_points=draw(basis_points),
                     allow_user_ids=draw(user_sets), deny_user_ids=draw(user_sets))


def test_buckets_are_pinned() -> None:
    """SHA-256 of "flag[salt]:uuid": the same on every process, version and machine.
    A change here moves users between variants during a rollout: never change it."""
    cases = {
        (RUNS_V2, uuid.UUID(int=0), ""): 2485,
        (RUNS_V2, uuid.UUID(int=1), ""): 9377,
        (RUNS_V2, uuid.UUID(int=2), ""): 3114,
        (RUNS_V2, uuid.UUID(int=0), SHADOW_SALT): 1862,
        (RUNS_V2, uuid.UUID(int=3), SHADOW_SALT): 1607,
        (RUNS_V2, uuid.UUID("2f1c3d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"), ""): 1324,
        ("ff.potato.totals_v2", uuid.UUID("2f1c3d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"), ""): 8790,
    }
    for (flag, user, salt), expected in cases.items():
        assert bucket(flag, user, salt) == expected


@given(flags(), users, basis_points, basis_points)
def test_raising_a_percentage_only_adds_users(flag: FlagState, user: uuid.UUID,
                                              rollout: int, shadow: int) -> None:
    low = dataclasses.replace(flag, rollout_basis_points=min(rollout, flag.rollout_basis_points))
    high = dataclasses.replace(flag, rollout_basis_points=max(rollout, flag.rollout_basis_points))
    if evaluate(low, user) is Variant.V2:
        assert evaluate(high, user) is Variant.V2
    # Raising the shadow share never removes a user from the compared ones (or from v2).
    lo = dataclasses.replace(flag, shadow_basis_points=min(shadow, flag.shadow_basis_points))
    hi = dataclasses.replace(flag, shadow_basis_points=max(shadow, flag.shadow_basis_points))
    assert evaluate(hi, user) is evaluate(lo, user) or (
        evaluate(lo, user) is Variant.LEGACY and evaluate(hi, user) is Variant.SHADOW)


@given(flags(), users)
def test_deny_wins_over_allow_and_disabled_is_legacy(flag: FlagState, user: uuid.UUID) -> None:
    both = dataclasses.replace(flag, allow_user_ids=flag.allow_user_ids | {user},
                               deny_user_ids=flag.deny_user_ids | {user})
    assert evaluate(both, user) is Variant.LEGACY
    allowed = dataclasses.replace(flag, allow_user_ids=flag.allow_user_ids | {user},
                                  deny_user_ids=flag.deny_user_ids - {user})
    assert evaluate(allowed, user) is (Variant.V2 if flag.enabled else Variant.LEGACY)
    off = dataclasses.replace(flag, enabled=False)
    assert resolve(off, user) == (Variant.LEGACY, Rule.DISABLED)
    assert resolve(None, user) == (Variant.LEGACY, Rule.UNKNOWN)


@given(flags(), users)
def test_resolve_names_the_rule_that_decided(flag: FlagState, user: uuid.UUID) -> None:
    variant, rule = resolve(flag, user)
    assert variant is evaluate(flag, user)
    expected = {Rule.DISABLED: Variant.LEGACY, Rule.DENY: Variant.LEGACY,
                Rule.ALLOW: Variant.V2, Rule.ROLLOUT: Variant.V2,
                Rule.SHADOW: Variant.SHADOW, Rule.DEFAULT: Variant.LEGACY}
    assert expected[rule] is variant
    if rule is Rule.ROLLOUT:
        assert bucket(flag.name, user) < flag.rollout_basis_points


def test_observed_shares_follow_the_percentages() -> None:
    """Over 20,000 random users the share of v2 is within 1.5 points of the rollout,
    and the shadow share is that of the remaining users (binomial: sigma <= 0.36 pt)."""
    rng = random.Random(20251)
    people = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(20_000)]
    for rollout, shadow in ((0, 0), (100, 0), (1000, 5000), (5000, 10000), (10000, 10000)):
        flag = FlagState(RUNS_V2, enabled=True, rollout_basis_points=rollout,
                         shadow_basis_points=shadow)
        got = [evaluate(flag, u) for u in people]
        v2 = got.count(Variant.V2) / len(people)
        shadowed = got.count(Variant.SHADOW) / len(people)
        assert abs(v2 - rollout / BUCKETS) <= 0.015, (rollout, v2)
        assert abs(shadowed - (1 - rollout / BUCKETS) * shadow / BUCKETS) <= 0.015, \
            (rollout, shadow, shadowed)


@given(st.integers(0, BUCKETS))
def test_every_step_of_0_01_is_accepted_exactly(bp: int) -> None:
    assert percent_to_basis_points(bp / 100) == bp
    assert percent_to_basis_points(float(Decimal(bp) / 100)) == bp


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_only_steps_of_0_01_within_0_to_100_are_accepted(value: float) -> None:
    bp = percent_to_basis_points(value)
    if bp is None:
        on_step = 0 <= value <= 100 and abs(round(value * 100) - value * 100) <= 1e-6
        assert not on_step
    else:
        assert 0 <= bp <= BUCKETS and abs(bp / 100 - value) < 1e-6


def test_off_step_and_out_of_range_values_are_refused() -> None:
    for value in (-0.01, 100.01, 12.345, 0.001, float("nan"), float("inf"), -float("inf")):
        assert percent_to_basis_points(value) is None, value
    assert percent_to_basis_points(12.34) == 1234 and percent_to_basis_points(100) == BUCKETS
