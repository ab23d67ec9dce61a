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
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from potato_runs.app import App, Database, Migrator, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.storage.citus import is_distributed
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.pool import create_pool
from potato_runs.storage.roles import OWNER_ROLE

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
    def __init__(self, dsn: str, clock: FixedClock, *, owner: bool = False,
                 **settings: Any) -> None:
        """`settings` override the test server's Settings (e.g. auth_policy=path).
        `dsn` is the test's (superuser) DSN; the server connects as potato_app
        (`app_dsn`), so every test exercises the least-privilege role. `owner`: the
        server also has an owner (migrate) connection, the superuser acting as
        potato_owner, as the embedded cluster's server has (the blue/green rebuild)."""
        self.dsn = dsn
        self.owner = owner
        self.app_dsn = app_dsn(dsn)
        self.clock = clock
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="potato-server",
                                        daemon=True)
        self.app: App | None = None

    def start(self) -> ServerThread:
        self._thread.start()

        async def boot() -> App:
            pool = await create_pool(self.app_dsn, min_size=2, max_size=20)
            settings = Settings(**{**dict(
                host="127.0.0.1", port=0, dsn=self.app_dsn, grace_period=1.0,
                invariant_check_interval=0, health_probe_interval=0,
                admin_token=ADMIN_TOKEN, totals_reconcile_at=None), **self.settings})
            migrator = Migrator(self.dsn, role=OWNER_ROLE) if self.owner else None
            async with pool.acquire() as conn:
                citus = await is_distributed(conn)   # the Citus tier (tests/citus/)
            return await build_app(settings, clock=self.clock, database=Database(
                dsn=self.app_dsn, pool=pool, migrator=migrator, citus=citus))

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
    inside the transaction the test has open on it. Like asyncpg's pool, `acquire()` is
    awaitable (then `release`) and an async context manager."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def acquire(self, timeout: float | None = None) -> _Lent:
        return _Lent(self._conn)

    async def release(self, conn: asyncpg.Connection) -> None:
        assert conn is self._conn


class _Lent:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        yield from asyncio.sleep(0).__await__()
        return self._conn

    async def __aenter__(self) -> asyncpg.Connection:
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        return None


def alive(pid: int) -> bool:
    """Whether a process exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


APP_PASSWORD = "potato-app-test-password"
"""potato_app's password in the test cluster (tests/conftest.py creates the roles)."""


def app_dsn(dsn: str) -> str:
    """`dsn` (any database of the test cluster) as potato_app, the least-privilege role
    every test server connects as (storage/roles.py)."""
    from urllib.parse import urlsplit, urlunsplit

    from potato_runs.storage.roles import APP_ROLE

    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{APP_ROLE}:{APP_PASSWORD}@{host}"))


async def prepare_roles(superuser_dsn: str) -> None:
    """The embedded cluster's role setup (storage/roles.py: potato_owner owns the
    database, potato_app may only use it) on a database of the test cluster, and
    potato_app's grants on whatever is already there."""
    from potato_runs.storage.migrate import sync_grants
    from potato_runs.storage.roles import prepare_cluster

    conn = await asyncpg.connect(superuser_dsn)
    try:
        await prepare_cluster(conn, app_password=APP_PASSWORD)
        await sync_grants(conn)
    finally:
        await conn.close()


def fresh_database(pg_dsn: str, name: str) -> str:
    """A migrated database `name` of its own in the test cluster (created when missing):
    for tests that read or change everything (population diff, reconciliation). The
    migration grants potato_app its privileges (ServerThread connects as it)."""
    from potato_runs.storage.migrate import ensure_database, migrate

    dsn = pg_dsn.rsplit("/", 1)[0] + "/" + name

    async def prepare() -> None:
        await ensure_database(pg_dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(prepare())
    return dsn


FILL_TOTALS = """
DELETE FROM run_totals; DELETE FROM user_totals;
INSERT INTO run_totals (user_id, yyyymm, streak_days, total_days, updated_at)
SELECT t.user_id, t.yyyymm, t.streak_days, t.total_days, now()
  FROM potato_computed_month_totals(ARRAY(SELECT user_id FROM users)) t;
INSERT INTO user_totals (user_id, total_days, run_count, longest_run_days, updated_at)
SELECT u.user_id, coalesce(t.total_days, 0), coalesce(t.run_count, 0),
       coalesce(t.longest_run_days, 0), now()
  FROM users u
  LEFT JOIN potato_computed_user_totals(ARRAY(SELECT user_id FROM users)) t USING (user_id);
"""
"""Stored totals set to the computed ones for everyone: a known starting point."""

TOTALS_DRIFT = """
SELECT count(*) FROM (
    (SELECT user_id, yyyymm, streak_days, total_days FROM run_totals
     EXCEPT ALL SELECT * FROM potato_computed_month_totals(ARRAY(SELECT user_id FROM users)))
    UNION ALL
    (SELECT * FROM potato_computed_month_totals(ARRAY(SELECT user_id FROM users))
     EXCEPT ALL SELECT user_id, yyyymm, streak_days, total_days FROM run_totals)
    UNION ALL
    (SELECT u.user_id, 0, 0, 0 FROM users u
       LEFT JOIN potato_computed_user_totals(ARRAY(SELECT user_id FROM users)) c USING (user_id)
       LEFT JOIN user_totals t USING (user_id)
      WHERE (t.total_days, t.run_count, t.longest_run_days) IS DISTINCT FROM
            (coalesce(c.total_days, 0), coalesce(c.run_count, 0),
             coalesce(c.longest_run_days, 0)))) d
"""
"""Rows where the stored totals differ from the computed ones, counted independently of
the service's reconciliation (0 when every stored total is right)."""


@contextlib.contextmanager
def stoppable_cluster(prefix: str, database: str, *,
                      fast_unsafe: bool = True) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL cluster of one test's own, which the test may stop and start (an
    outage) without touching the session cluster: database `database` migrated by the
    superuser (as the owner role) and potato_app prepared, as in the embedded default.
    `fast_unsafe=False` keeps fsync on (a durable cluster)."""
    from potato_runs.storage.migrate import ensure_database, migrate

    base = tempfile.mkdtemp(prefix=f"potato-{prefix}-")
    os.chmod(base, 0o755)   # the cluster may run as `nobody` (root): it must reach it
    pg = EmbeddedPostgres(Path(base) / "cluster", fast_unsafe=fast_unsafe)
    pg.start()

    async def prepare() -> None:
        await ensure_database(pg.dsn("postgres"), database)
        conn = await asyncpg.connect(pg.dsn(database))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await prepare_roles(pg.dsn(database))

    try:
        asyncio.run(prepare())
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
