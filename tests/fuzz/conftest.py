"""The fuzz server: a real server on port 0 over a database of its own.

Its own database (`potato_fuzz`), because the fuzz calls everything: whole-database
checks, batch rebuilds, population diffs and flag updates would otherwise reach, and be
slowed by, every other test's users. Its own clock (DEFAULT_NOW), because other tests move
the session clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from fuzz.harness import STATS, Fuzzer
from potato_runs.clock import FixedClock
from support import DEFAULT_NOW, ServerThread, fresh_database


async def _empty(dsn: str) -> None:
    """A rerun against a kept cluster (POTATO_TEST_DSN) starts from no users."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT DISTINCT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'user_id' "
            "  AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')")]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fuzz_server(pg_dsn: str) -> Iterator[ServerThread]:
    dsn = fresh_database(pg_dsn, "potato_fuzz")
    asyncio.run(_empty(dsn))
    srv = ServerThread(dsn, FixedClock(DEFAULT_NOW)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def fuzzer(fuzz_server: ServerThread) -> Iterator[Fuzzer]:
    fz = Fuzzer(fuzz_server.target)
    try:
        yield fz
    finally:
        fz.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The request count and what came back, also under -q."""
    if STATS.requests:
        terminalreporter.write_line(STATS.summary())
