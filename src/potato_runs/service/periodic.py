"""A background round that repeats every `interval` seconds until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)


class Periodic(ABC):
    name = "periodic"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def round(self) -> None:
        """One round; an exception is logged and handed to `on_failure`."""

    @abstractmethod
    def on_failure(self) -> None:
        """Called when a round raised; the loop goes on."""

    async def _loop(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # keep going whatever one round did
                log.exception("%s round failed", self.name)
                self.on_failure()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Starts the loop (the first round at once); interval 0 disables it."""
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
