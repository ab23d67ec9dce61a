"""Load shedding that fits gRPC: excess calls get RESOURCE_EXHAUSTED at once, and a
draining server answers UNAVAILABLE rather than letting gRPC cancel calls.

grpc's own `maximum_concurrent_rpcs` was the limit before. The hardening issue's probe
saw, at 3x that limit, RESOURCE_EXHAUSTED after about a second and a fifth to a third of
the calls CANCELLED without trailers; here (`scripts/bench_overload.py`, a loaded 2-core
machine) it refused in 9-12 ms at p50, but without status details, and it counted health
checks against the same limit: 7 to 42 of about 90 probes were refused. `LoadShedder`
counts instead only the calls in flight in our own services (it wraps their handlers at
registration, `registration.HandlerInterceptor`): health and reflection are registered by
their libraries and never counted nor refused, and `AdminService/RollbackFlag` is exempt
(a rollback must get through during an incident). A call beyond the limit is answered
before its handler runs, with `google.rpc.ErrorInfo` reason `OVERLOADED` (metadata
`write_outcome: not_applied`: nothing ran) and the `grpc-retry-pushback-ms` trailer of
gRFC A6, which a client with the retry service config (`transport/service_config.py`)
honours: it retries after that many milliseconds.

Long-lived server streams (`WatchRunEvents`) are counted apart: a stream that lasts
hours is not a call in flight, would hold a slot for ever and keep a drain waiting; each
streaming method has its own limit (`streams`, POTATO_MAX_WATCHERS), beyond which a new
stream gets RESOURCE_EXHAUSTED (reason `TOO_MANY_WATCHERS`).

On SIGTERM the server first `drain()`s: every new call gets UNAVAILABLE (reason
`SERVER_DRAINING`, `write_outcome: not_applied`), so a client retries on another
replica, while the calls in flight finish; `quiesce()` returns once none is left and no
call has arrived for a moment, and only then is gRPC's server stopped. Stopping it at
once cancelled the calls gRPC had received but not yet handed to a handler (CANCELLED,
about 1 call in 800 of a SIGTERM under load, tests/faults/test_sigterm.py).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import grpc

from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.transport.status import to_status

PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
NEVER_SHED = frozenset({"/potato.runs.v2.AdminService/RollbackFlag"})
STREAM_PUSHBACK_MS = 1000
"""Retry pushback of a stream refused for the stream limit."""
"""Methods served whatever the load: the flag rollback is the incident's way out."""

Behavior = Callable[[Any, Any], Awaitable[Any]]


class LoadShedder:
    """A `registration.HandlerInterceptor`: at most `limit` calls of the wrapped methods in
    flight in this process; the next ones get RESOURCE_EXHAUSTED (reason OVERLOADED) before
    any work, with a retry pushback of about `pushback_ms` (jittered +-50 %, so shed
    clients do not come back together), or `-1` (gRFC A6: do not retry) when the call's
    deadline would pass before a retry could be answered.

    The accepted call's price is one comparison and two integer updates (the server runs
    on one event loop, so the counter needs no lock); `scripts/bench_shedding.py` measures
    it. `shed` counts refused calls (for tests and benchmarks)."""

    def __init__(self, limit: int, *, pushback_ms: int = 100,
                 exempt: Collection[str] = NEVER_SHED,
                 streams: Mapping[str, int] | None = None) -> None:
        """`streams`: long-lived streaming methods -> the most of them open at once.
        They are not counted in `limit` (a stream that lasts hours is not a call in
        flight, and would hold a slot for ever, nor does it block the drain); beyond
        their own limit a new one gets RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.pushback_ms = pushback_ms
        self.exempt = frozenset(exempt)
        self.streams = dict(streams or {})
        self.open_streams: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.in_flight = 0
        self.shed = 0
        self.draining = False
        self._last_arrival = 0.0
        self._idle = asyncio.Event()
        err = DomainError(ErrorKind.RESOURCE_EXHAUSTED, Reason.OVERLOADED,
                          f"the server has {limit} calls in flight, its limit; retry after "
                          f"the {PUSHBACK_TRAILER} trailer's milliseconds, with backoff",
                          {"limit": str(limit), "write_outcome": "not_applied"})
        code, status = to_status(err)
        self._code = code
        self._message = status.message
        self._details = status.SerializeToString()   # the same for every refused call
        code, status = to_status(DomainError(
            ErrorKind.UNAVAILABLE, Reason.SERVER_DRAINING,
            "this server is shutting down; retry on another replica",
            {"write_outcome": "not_applied"}))
        self._drain_status = (code, status.message, (
            ("grpc-status-details-bin", status.SerializeToString()),))

    def intercept(self, method: str, behavior: Behavior) -> Behavior:
        if method in self.exempt:
            return behavior
        if method in self.streams:
            return self._limit_streams(method, behavior)

        @functools.wraps(behavior)
        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.in_flight >= self.limit or self.draining:
                await self._refuse(context)
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1
                if self.draining and self.in_flight == 0:
                    self._idle.set()

        return limited

    def _limit_streams(self, method: str, behavior: Behavior) -> Behavior:
        limit = self.streams[method]
        code, status = to_status(DomainError(
            ErrorKind.RESOURCE_EXHAUSTED, Reason.TOO_MANY_WATCHERS,
            f"the server has {limit} streams of {method} open, its limit "
            f"(POTATO_MAX_WATCHERS); retry later or on another replica",
            {"limit": str(limit), "method": method}))
        trailers = (("grpc-status-details-bin", status.SerializeToString()),
                    (PUSHBACK_TRAILER, str(STREAM_PUSHBACK_MS)))

        @functools.wraps(behavior)
        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.draining:
                code_, message, drain = self._drain_status
                await context.abort(code_, message, trailing_metadata=drain)
            if self.open_streams[method] >= limit:
                self.shed += 1
                await context.abort(code, status.message, trailing_metadata=trailers)
            self.open_streams[method] += 1
            try:
                return await behavior(request, context)
            finally:
                self.open_streams[method] -= 1

        return limited

    def pushback(self, time_remaining: float | None) -> int:
        """Milliseconds the client should wait before its retry; -1 (no retry) when the
        call's deadline leaves no time to wait and be served."""
        wait = random.randint(self.pushback_ms // 2, self.pushback_ms * 3 // 2)
        if time_remaining is not None and time_remaining * 1000 < 2 * wait:
            return -1
        return wait

    def drain(self) -> None:
        """From now on every new call of the wrapped methods gets UNAVAILABLE."""
        self.draining = True
        self._last_arrival = time.monotonic()
        if self.in_flight == 0:
            self._idle.set()

    async def quiesce(self, timeout: float, quiet: float = 0.1) -> bool:
        """After drain(): waits (at most `timeout` seconds) until no call is in flight and
        none has arrived for `quiet` seconds, so gRPC's stop cancels nothing it had
        received. True when that happened within the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
            calm = time.monotonic() - self._last_arrival
            if calm >= quiet and self.in_flight == 0:
                return True
            # A call arrived lately (and was refused): give the next one time to show.
            await asyncio.sleep(min(quiet - calm, max(deadline - time.monotonic(), 0)))

    async def _refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.draining:
            self._last_arrival = time.monotonic()
            code, message, trailers = self._drain_status
            await context.abort(code, message, trailing_metadata=trailers)
        self.shed += 1
        pushback = self.pushback(context.time_remaining())
        await context.abort(self._code, self._message, trailing_metadata=(
            ("grpc-status-details-bin", self._details),
            (PUSHBACK_TRAILER, str(pushback))))
