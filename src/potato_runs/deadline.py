"""Deadlines: every pool acquire and query gets a timeout derived from the RPC's."""

from __future__ import annotations

import time
from dataclasses import dataclass

from potato_runs.domain.errors import DomainError, ErrorKind, Reason


@dataclass(frozen=True)
class Deadline:
    expires_at: float  # time.monotonic() seconds

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_rpc(cls, time_remaining: float | None, default: float, cap: float) -> Deadline:
        """The RPC's remaining time (capped), or the default when it set none."""
        if time_remaining is None:
            return cls.after(default)
        return cls.after(min(time_remaining, cap))

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def timeout(self, reserve: float = 0.005) -> float:
        """Seconds left for one database step; raises when nothing is left."""
        left = self.remaining() - reserve
        if left <= 0:
            raise DomainError(ErrorKind.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                              "the request's deadline passed before the database answered")
        return left
