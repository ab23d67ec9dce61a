"""The background loop behind the database probe and the invariant monitor."""

from __future__ import annotations

import asyncio

from potato_runs.service.periodic import Periodic


class Flaky(Periodic):
    """Fails on its first round, then counts rounds until told to stop."""

    def __init__(self, interval: float) -> None:
        super().__init__(interval)
        self.rounds = 0
        self.failures = 0
        self.third = asyncio.Event()

    async def round(self) -> None:
        self.rounds += 1
        if self.rounds == 3:
            self.third.set()
        if self.rounds == 1:
            raise RuntimeError("first round fails")

    def on_failure(self) -> None:
        self.failures += 1


async def test_a_failing_round_is_reported_and_the_loop_goes_on() -> None:
    task = Flaky(interval=0.001)
    task.start()
    await asyncio.wait_for(task.third.wait(), timeout=10)
    await task.stop()
    assert task.failures == 1 and task.rounds >= 3
    stopped_at = task.rounds
    await asyncio.sleep(0)   # a stopped loop runs no more rounds
    assert task.rounds == stopped_at


async def test_interval_zero_disables_the_loop() -> None:
    task = Flaky(interval=0)
    task.start()
    await task.stop()
    assert task.rounds == 0
