"""Test support: a real PostgreSQL cluster and a real gRPC server on port 0.

The server runs on its own event loop in a background thread, so async tests
(on pytest-asyncio's loop) and synchronous code such as hypothesis state
machines can both call it: over gRPC, or through ServerThread.run(coro).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.storage.pool import create_pool

T = TypeVar("T")

DEFAULT_NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
ADMIN_TOKEN = "test-admin-token-0123456789"
"""The AdminService token of the test server (ServerThread)."""
ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


class BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every unary call of a channel."""

    def __init__(self, token: str = ADMIN_TOKEN) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        details = client_call_details._replace(
            metadata=grpc.aio.Metadata(*(tuple(client_call_details.metadata or ()) +
                                         self._metadata)))
        return await continuation(details, request)


class ServerThread:
    def __init__(self, dsn: str, clock: FixedClock) -> None:
        self.dsn = dsn
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="potato-server",
                                        daemon=True)
        self.app: App | None = None

    def start(self) -> ServerThread:
        self._thread.start()

        async def boot() -> App:
            pool = await create_pool(self.dsn, min_size=2, max_size=20)
            settings = Settings(host="127.0.0.1", port=0, dsn=self.dsn, grace_period=1.0,
                                invariant_check_interval=0, health_probe_interval=0,
                                admin_token=ADMIN_TOKEN)
            return await build_app(settings, clock=self.clock,
                                   database=Database(dsn=self.dsn, pool=pool))

        self.app = self.run(boot())
        return self

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.app is not None:
            self.run(self.app.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def rich_status(exc: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None,
                                             error_details_pb2.BadRequest | None,
                                             status_pb2.Status]:
    """Decodes google.rpc.Status details from a failed call's trailers."""
    trailers = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
    assert raw is not None, "no grpc-status-details-bin trailer"
    status = status_pb2.Status.FromString(raw)
    info = bad = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad, status


class OneConnectionPool:
    """Stands in for a pool: runs the library's checker/rebuild on one connection,
    inside the transaction the test has open on it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def acquire(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        conn = self._conn

        @contextlib.asynccontextmanager
        async def cm() -> AsyncIterator[asyncpg.Connection]:
            yield conn

        return cm()


def alive(pid: int) -> bool:
    """Whether a process exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
