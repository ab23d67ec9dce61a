"""Migrations: ordered, recorded, checksummed, and safe when replicas start together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from potato_runs.storage.migrate import MigrationError, ensure_database, migrate, migrations


@pytest.fixture
async def fresh_db(pg_dsn: str) -> AsyncIterator[str]:
    base = pg_dsn.rsplit("/", 1)[0]
    name = f"mig_{uuid.uuid4().hex[:8]}"
    # Four processes asking for the same database at once: all succeed.
    await asyncio.gather(*(ensure_database(base + "/postgres", name) for _ in range(4)))
    yield f"{base}/{name}"
    conn = await asyncpg.connect(base + "/postgres")
    await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await conn.close()


async def test_concurrent_migrators_apply_each_migration_once(fresh_db: str) -> None:
    conns = [await asyncpg.connect(fresh_db) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = [v for r in results for v in r]
    assert sorted(applied) == [m.version for m in migrations()]
    conn = await asyncpg.connect(fresh_db)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in migrations()]
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_an_edited_migration_is_refused(fresh_db: str) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        await migrate(conn)
        await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = $1",
                           migrations()[0].version)
        with pytest.raises(MigrationError):
            await migrate(conn)
    finally:
        await conn.close()
