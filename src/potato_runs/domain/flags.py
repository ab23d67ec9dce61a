"""Feature flags: the one home of the bucketing and variant rules (pure).

A user is bucketed by a stable hash of the flag name and the user id into
10,000 buckets; percentages are basis points (0..10000), so 0.01 % steps are
exact. Raising a percentage only ever adds users: a bucket below the old
threshold is below the new one too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

BUCKETS = 10_000
RUNS_V2 = "ff.potato.runs_v2"
TOTALS_V2 = "ff.potato.totals_v2"
KNOWN_FLAGS = (RUNS_V2, TOTALS_V2)


class Variant(StrEnum):
    """What a flag gives one user."""

    LEGACY = "legacy"    # served legacy, not compared
    SHADOW = "shadow"    # served legacy, compared with v2 off the response path
    V2 = "v2"            # served v2


@dataclass(frozen=True)
class FlagState:
    name: str
    enabled: bool = False
    rollout_basis_points: int = 0
    shadow_basis_points: int = 0
    allow_user_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)
    deny_user_ids: frozenset[uuid.UUID] = field(default_factory=frozenset)
    revision: int = 0
    updated_at: dt.datetime | None = None
    updated_by: str = ""
    update_reason: str = ""

    @property
    def rollout_percent(self) -> float:
        return self.rollout_basis_points / 100

    @property
    def shadow_percent(self) -> float:
        return self.shadow_basis_points / 100


def bucket(flag: str, user_id: uuid.UUID, salt: str = "") -> int:
    """0..9999, stable across processes, versions and machines (SHA-256, not hash())."""
    digest = hashlib.sha256(f"{flag}{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


SHADOW_SALT = "#shadow"
"""The shadow sample uses its own hash, so it is independent of the rollout."""


class Rule(StrEnum):
    """Which rule decided a user's variant (the OpenFeature provider reports it)."""

    UNKNOWN = "unknown"      # no such flag: legacy
    DISABLED = "disabled"    # kill switch: legacy
    DENY = "deny"            # in deny_user_ids: legacy
    ALLOW = "allow"          # in allow_user_ids: v2
    ROLLOUT = "rollout"      # bucket below rollout: v2
    SHADOW = "shadow"        # shadow bucket below shadow: shadow
    DEFAULT = "default"      # none of the above: legacy


def resolve(flag: FlagState | None, user_id: uuid.UUID) -> tuple[Variant, Rule]:
    """The variant of one user and the rule that chose it."""
    if flag is None:
        return Variant.LEGACY, Rule.UNKNOWN
    if not flag.enabled:
        return Variant.LEGACY, Rule.DISABLED
    if user_id in flag.deny_user_ids:
        return Variant.LEGACY, Rule.DENY
    if user_id in flag.allow_user_ids:
        return Variant.V2, Rule.ALLOW
    if flag.rollout_basis_points and bucket(flag.name, user_id) < flag.rollout_basis_points:
        return Variant.V2, Rule.ROLLOUT
    if flag.shadow_basis_points and (
            bucket(flag.name, user_id, SHADOW_SALT) < flag.shadow_basis_points):
        return Variant.SHADOW, Rule.SHADOW
    return Variant.LEGACY, Rule.DEFAULT


def evaluate(flag: FlagState | None, user_id: uuid.UUID) -> Variant:
    """The variant of one user. An unknown flag, like a disabled one, is legacy."""
    return resolve(flag, user_id)[0]


def percent_to_basis_points(value: float) -> int | None:
    """0..100 in steps of 0.01 -> 0..10000; None when out of range or off-step."""
    if value != value or value < 0 or value > 100:   # NaN, or outside 0..100
        return None
    bp = round(value * 100)
    if abs(bp - value * 100) > 1e-6:
        return None
    return int(bp)


class FlagEvaluator(Protocol):
    """What the read paths ask: which variant a flag gives one user. Evaluations are
    in memory (no database round trip)."""

    def variant(self, flag: str, user_id: uuid.UUID) -> Variant: ...


class StaticFlags:
    """A FlagEvaluator over fixed states (tests, and tools that read no table)."""

    def __init__(self, *states: FlagState) -> None:
        self.states = {s.name: s for s in states}

    def variant(self, flag: str, user_id: uuid.UUID) -> Variant:
        return evaluate(self.states.get(flag), user_id)
