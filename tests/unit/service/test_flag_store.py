"""FlagStore's OpenFeature evaluation over a snapshot (no database: the snapshot is set
directly; the refresh paths are tested in tests/integration/test_flags.py)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from potato_runs.domain.flags import RUNS_V2, FlagState, Variant, evaluate
from potato_runs.service.flags import FlagStore, FlagUpdate, sanitize_actor

ALLOWED, DENIED = uuid.UUID(int=1), uuid.UUID(int=2)


@pytest.fixture
def store() -> Iterator[FlagStore]:
    s = FlagStore("postgresql://unused", None)  # type: ignore[arg-type]  # never started
    yield s


def test_the_openfeature_answer_agrees_with_evaluate_and_names_the_reason(
        store: FlagStore) -> None:
    flag = FlagState(RUNS_V2, enabled=True, rollout_basis_points=3000, shadow_basis_points=5000,
                     allow_user_ids=frozenset({ALLOWED}), deny_user_ids=frozenset({DENIED}))
    store.flags = {RUNS_V2: flag}
    rng = random.Random(7)
    for _ in range(2000):
        user = uuid.UUID(int=rng.getrandbits(128))
        assert store.variant(RUNS_V2, user) is evaluate(flag, user)
    reasons = {store.details(RUNS_V2, uuid.UUID(int=rng.getrandbits(128))).reason
               for _ in range(200)}
    assert reasons == {Reason.SPLIT, Reason.DEFAULT}
    allowed = store.details(RUNS_V2, ALLOWED)
    assert (allowed.value, allowed.variant, allowed.reason) == ("v2", "v2", Reason.TARGETING_MATCH)
    denied = store.details(RUNS_V2, DENIED)
    assert (denied.value, denied.reason) == ("legacy", Reason.TARGETING_MATCH)

    store.flags = {RUNS_V2: FlagUpdate(enabled=False).apply(flag)}
    off = store.details(RUNS_V2, ALLOWED)
    assert (off.value, off.reason) == ("legacy", Reason.DISABLED)
    assert store.variant(RUNS_V2, ALLOWED) is Variant.LEGACY


def test_errors_answer_legacy(store: FlagStore) -> None:
    store.flags = {RUNS_V2: FlagState(RUNS_V2, enabled=True, rollout_basis_points=10_000)}
    missing = store.details("ff.no.such", ALLOWED)
    assert (missing.value, missing.error_code) == ("legacy", ErrorCode.FLAG_NOT_FOUND)
    assert store.variant("ff.no.such", ALLOWED) is Variant.LEGACY
    bad = store.details(RUNS_V2, "not-a-uuid")
    assert (bad.value, bad.error_code) == ("legacy", ErrorCode.INVALID_CONTEXT)
    assert store.variant(RUNS_V2, ALLOWED) is Variant.V2


def test_stores_do_not_share_flags(store: FlagStore) -> None:
    other = FlagStore("postgresql://unused", None)  # type: ignore[arg-type]
    store.flags = {RUNS_V2: FlagState(RUNS_V2, enabled=True, rollout_basis_points=10_000)}
    assert store.domain != other.domain
    assert store.variant(RUNS_V2, ALLOWED) is Variant.V2
    assert other.variant(RUNS_V2, ALLOWED) is Variant.LEGACY


def test_actor_is_printable_and_bounded() -> None:
    assert sanitize_actor(None) == sanitize_actor("") == sanitize_actor("  ") == "admin-token"
    assert sanitize_actor("bob\n@x\x1b") == "bob?@x?"
    assert len(sanitize_actor("a" * 1000)) == 128
