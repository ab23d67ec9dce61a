"""Session fixtures: one real PostgreSQL cluster and one real gRPC server."""

from __future__ import annotations

import os

# Before grpc is imported: the embedded cluster uses subprocesses, and gRPC's
# fork handlers only print noise about them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, settings

from potato.runs.v2 import admin_service_pb2_grpc, runs_service_pb2_grpc
from potato_runs.clock import FixedClock
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.roles import OWNER_ROLE

sys.path.insert(0, str(Path(__file__).parent))
from support import DEFAULT_NOW, BearerInterceptor, ServerThread, prepare_roles

SEED_KEY = pytest.StashKey[object]()

# Hypothesis profiles: quick in CI by default, deep on request
# (POTATO_HYPOTHESIS_PROFILE=deep). Failing examples print their seed and
# are replayed from the example database (.hypothesis/).
settings.register_profile("quick", max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=1000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("POTATO_HYPOTHESIS_PROFILE", "quick")
settings.load_profile(PROFILE)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Every run has a known seed, printed in the header, so any run can be replayed:
    POTATO_HYPOTHESIS_SEED=N (or --hypothesis-seed=N). The quick profile defaults to
    a fixed seed, so CI is deterministic; the deep profile draws a fresh one."""
    from hypothesis import core

    if config.getoption("--hypothesis-seed") is None:
        env = os.environ.get("POTATO_HYPOTHESIS_SEED")
        seed = int(env) if env else (20251 if PROFILE == "quick" else random.randrange(2**32))
        core.global_force_seed = seed
    config.stash[SEED_KEY] = core.global_force_seed


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash.get(SEED_KEY, None)
    return (f"hypothesis: profile {PROFILE}, seed {seed} "
            f"(replay with POTATO_HYPOTHESIS_SEED={seed} and the same profile)")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (fsync off), migrated once."""
    external = os.environ.get("POTATO_TEST_DSN")
    if external:
        asyncio.run(prepare_roles(external))
        yield external
        return
    base = Path(tempfile.mkdtemp(prefix="potato-test-pg-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "cluster", fast_unsafe=True)
    cluster.start()

    async def prepare() -> None:
        # As the embedded default does: the owner role owns the database and migrates
        # (the superuser through SET ROLE), and every test server connects as potato_app
        # (support.ServerThread), so the whole suite runs with least privilege.
        await ensure_database(cluster.dsn("postgres"), "potato_test")
        await prepare_roles(cluster.dsn("potato_test"))
        conn = await asyncpg.connect(cluster.dsn("potato_test"))
        try:
            await conn.execute(f"SET ROLE {OWNER_ROLE}")
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(prepare())
    try:
        yield cluster.dsn("potato_test")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def test_clock() -> FixedClock:
    return FixedClock(DEFAULT_NOW)


@pytest.fixture(scope="session")
def server(pg_dsn: str, test_clock: FixedClock) -> Iterator[ServerThread]:
    srv = ServerThread(pg_dsn, test_clock).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clock(test_clock: FixedClock) -> Iterator[FixedClock]:
    """The server's clock; put back to DEFAULT_NOW after each test."""
    test_clock.set(DEFAULT_NOW)
    yield test_clock
    test_clock.set(DEFAULT_NOW)


@pytest.fixture
async def channel(server: ServerThread) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> runs_service_pb2_grpc.RunsServiceStub:
    return runs_service_pb2_grpc.RunsServiceStub(channel)


@pytest.fixture
async def admin_stub(server: ServerThread) -> AsyncIterator[admin_service_pb2_grpc.AdminServiceStub]:
    """An AdminService stub whose calls carry the test server's admin token."""
    async with grpc.aio.insecure_channel(server.target,
                                         interceptors=[BearerInterceptor()]) as ch:
        yield admin_service_pb2_grpc.AdminServiceStub(ch)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for assertions and raw-SQL constraint tests."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def user_id() -> str:
    return str(uuid.uuid4())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """The seed again at the end (also under -q), where a failure is read."""
    terminalreporter.write_line(pytest_report_header(config))
