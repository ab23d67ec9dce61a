#!/usr/bin/env python
"""The cost of one feature-flag evaluation, per call.

Times `FlagStore.variant()` (the OpenFeature client and our provider over the
in-memory snapshot: what the read paths call) against the direct domain
`evaluate()`, for a flag at 10 % rollout / 50 % shadow with 0 and 1,000 allowed
user ids. No database is involved: an evaluation never makes a round trip.
Prints the median over several rounds, in microseconds per call.

Usage: .venv/bin/python scripts/bench_flags.py [--calls 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable

from potato_runs.domain.flags import RUNS_V2, FlagState, evaluate
from potato_runs.service.flags import FlagStore


def per_call_us(fn: Callable[[uuid.UUID], object], users: list[uuid.UUID], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for u in users:
            fn(u)
        samples.append((time.perf_counter() - start) / len(users) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="evaluations per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the median is shown)")
    args = parser.parse_args()
    rng = random.Random(1)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(args.calls)]
    store = FlagStore("postgresql://unused", None)  # type: ignore[arg-type]  # never started
    print(f"{args.calls} evaluations x {args.rounds} rounds, median us per call")
    print(f"{'allowed ids':>12} {'openfeature':>12} {'evaluate()':>11} {'overhead':>9}")
    for allowed in (0, 1000):
        flag = FlagState(RUNS_V2, enabled=True, rollout_basis_points=1000,
                         shadow_basis_points=5000,
                         allow_user_ids=frozenset(uuid.UUID(int=rng.getrandbits(128))
                                                  for _ in range(allowed)))
        store.flags = {RUNS_V2: flag}
        of = per_call_us(lambda u: store.variant(RUNS_V2, u), users, args.rounds)
        direct = per_call_us(lambda u, f=flag: evaluate(f, u), users, args.rounds)  # type: ignore[misc]
        print(f"{allowed:>12} {of:>12.2f} {direct:>11.2f} {of / direct:>8.1f}x")


if __name__ == "__main__":
    main()
