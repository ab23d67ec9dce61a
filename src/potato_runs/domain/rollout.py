"""Rollout of ff.potato.runs_v2: population diff results and the GO / NO-GO verdict.

Pure: the figures come in (from the population diff, the online shadow
comparisons and the invariant checker), a verdict goes out. The gates are the
ones of docs/v2.md (phase 6D, "go/no-go gates"); their thresholds live here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DIFF_CLASSES: tuple[str, ...] = (
    "day_count_mismatch",       # a projection run overlaps a legacy run with other bounds/day_count
    "missing_run",              # a legacy run that no projection run overlaps
    "extra_run",                # a projection run that overlaps no legacy run
    "overlap",                  # two projection runs of a user overlap or touch
    "uncovered_day",            # a check-in that no projection run covers
    "active_mismatch",          # the active run(s) are not exactly the legacy latest run
    "current_streak_mismatch",  # legacy and projection current streaks differ (user's zone, now)
)
EXAMPLES_PER_CLASS = 5

# --- the gates (docs/v2.md, phase 6D) ---------------------------------------------------
MAX_POPULATION_DIFFERENCES = 0
"""Users with any population difference allowed for GO."""
MAX_SHADOW_MISMATCH_RATE = 0.001
"""Online shadow mismatch rate allowed for GO (0.1 %): (mismatch + error) / compared."""
MIN_SHADOW_COMPARISONS = 1000
"""Comparisons (match + mismatch + error) needed in the window for the rate to count."""
SHADOW_WINDOW_HOURS = 24
"""Hours of online shadow comparisons the rate is computed over."""

GATE_POPULATION = "population_diff"
GATE_SHADOW = "shadow_mismatch_rate"
GATE_INVARIANTS = "invariants"


@dataclass(frozen=True)
class ClassCount:
    """Users of one difference class, with up to EXAMPLES_PER_CLASS of them (user_id order)."""

    name: str
    users: int
    examples: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class DiffBatch:
    """The population diff of one batch of users (user_id order)."""

    users_scanned: int
    users_different: int
    checkins_scanned: int
    classes: tuple[ClassCount, ...]
    last_user: uuid.UUID | None
    """The cursor for the next batch; None when the batch was empty."""


@dataclass
class PopulationDiff:
    """The batches of a diff added up."""

    users_scanned: int = 0
    users_different: int = 0
    checkins_scanned: int = 0
    batches: int = 0
    sample: int | None = None
    """Set when only the first `sample` users (user_id order) were diffed."""
    total_users: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIFF_CLASSES, 0))
    examples: dict[str, list[uuid.UUID]] = field(
        default_factory=lambda: {c: [] for c in DIFF_CLASSES})

    def add(self, batch: DiffBatch) -> None:
        self.batches += 1
        self.users_scanned += batch.users_scanned
        self.users_different += batch.users_different
        self.checkins_scanned += batch.checkins_scanned
        for c in batch.classes:
            self.counts[c.name] = self.counts.get(c.name, 0) + c.users
            kept = self.examples.setdefault(c.name, [])
            kept.extend(list(c.examples)[: EXAMPLES_PER_CLASS - len(kept)])

    def rate(self, name: str) -> float:
        return self.counts.get(name, 0) / self.users_scanned if self.users_scanned else 0.0


@dataclass(frozen=True)
class ShadowStats:
    """Online shadow comparisons of one flag over a window: (method, result) -> count."""

    counts: Mapping[tuple[str, str], int]
    stored_mismatches: int = 0
    window_hours: int = SHADOW_WINDOW_HOURS

    def total(self, result: str) -> int:
        return sum(n for (_, r), n in self.counts.items() if r == result)

    @property
    def compared(self) -> int:
        """Comparisons that ran (dropped ones never did)."""
        return self.total("match") + self.total("mismatch") + self.total("error")

    @property
    def mismatch_rate(self) -> float:
        """A comparison that errored counts against v2: it did not prove a match."""
        n = self.compared
        return (self.total("mismatch") + self.total("error")) / n if n else 0.0


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    figure: str
    """What was measured, e.g. "0.020 % over 12,345 comparisons"."""
    threshold: str
    """What GO needs, e.g. "<= 0.100 % over >= 1,000 comparisons"."""


@dataclass(frozen=True)
class Verdict:
    go: bool
    gates: tuple[Gate, ...]

    @property
    def label(self) -> str:
        return "GO" if self.go else "NO-GO"


def _pct(x: float) -> str:
    return f"{x * 100:.3f} %"


def verdict(diff: PopulationDiff, shadow: ShadowStats, violations: int,
            *, violations_truncated: bool = False,
            max_mismatch_rate: float = MAX_SHADOW_MISMATCH_RATE,
            min_comparisons: int = MIN_SHADOW_COMPARISONS) -> Verdict:
    """GO only when every gate passes."""
    scope = (f"first {diff.users_scanned:,} users (sample)" if diff.sample is not None
             else f"{diff.users_scanned:,} users")
    population = Gate(
        GATE_POPULATION, diff.users_different <= MAX_POPULATION_DIFFERENCES,
        f"{diff.users_different:,} users different of {scope}",
        f"<= {MAX_POPULATION_DIFFERENCES} users different")
    enough = shadow.compared >= min_comparisons
    rate = shadow.mismatch_rate
    figure = (f"{_pct(rate)} over {shadow.compared:,} comparisons in {shadow.window_hours} h "
              f"({shadow.total('mismatch'):,} mismatch, {shadow.total('error'):,} error, "
              f"{shadow.total('dropped'):,} dropped)")
    if not enough:
        figure += " - too few comparisons"
    online = Gate(GATE_SHADOW, enough and rate <= max_mismatch_rate, figure,
                  f"<= {_pct(max_mismatch_rate)} over >= {min_comparisons:,} comparisons")
    invariants = Gate(
        GATE_INVARIANTS, violations == 0,
        f"{violations:,}{'+' if violations_truncated else ''} violations", "0 violations")
    gates = (population, online, invariants)
    return Verdict(go=all(g.passed for g in gates), gates=gates)


def class_counts(rows: Iterable[tuple[str, int, Iterable[uuid.UUID]]]) -> tuple[ClassCount, ...]:
    """Rows (class, users, examples) in DIFF_CLASSES order, empty classes left out."""
    by_name = {name: ClassCount(name, int(users), tuple(list(ex)[:EXAMPLES_PER_CLASS]))
               for name, users, ex in rows if users}
    return tuple(by_name[c] for c in DIFF_CLASSES if c in by_name)
