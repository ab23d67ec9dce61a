"""Ordered SQL migrations recorded in schema_migrations."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from potato_runs.storage.roles import grant_app_privileges

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x506F7461746F  # one migrator at a time across processes


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    return [Migration(p.stem, p) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


class MigrationError(RuntimeError):
    pass


async def migrate(conn: asyncpg.Connection, timeout: float = 600.0) -> list[str]:
    """Applies the pending migrations in order; returns the versions applied.

    The advisory lock comes first, so replicas starting together wait for one
    another instead of racing on CREATE TABLE; `timeout` bounds each statement
    (the wait for another replica's migration included), not the pool's
    command_timeout."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK, timeout=timeout)
    try:
        # Only when missing: CREATE ... IF NOT EXISTS still needs CREATE on the schema,
        # and `serve --dsn` as potato_app must get through an up-to-date schema.
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())""", timeout=timeout)
        done = {r["version"]: r["checksum"] for r in
                await conn.fetch("SELECT version, checksum FROM schema_migrations",
                                 timeout=timeout)}
        for m in migrations():
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version} was changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql, timeout=timeout)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    m.version, m.checksum, timeout=timeout)
            applied.append(m.version)
        # Every run, not only when something was applied: a table of any migration
        # (this one's or a later one's) reaches potato_app without a grant of its own.
        await grant_app_privileges(conn, timeout=timeout)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def sync_grants(conn: asyncpg.Connection, timeout: float = 600.0) -> int:
    """grant_app_privileges under the migration lock (concurrent GRANTs on one object
    fail), for when the schema is not migrated: offline commands on the embedded
    cluster. Returns how many objects changed."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK, timeout=timeout)
    try:
        return await grant_app_privileges(conn, timeout=timeout)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Creates database `name` through the admin DSN when it does not exist."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                # 42P04, or 23505 on pg_database when two CREATE DATABASE race:
                # another process created it first.
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                           name):
                    raise
    finally:
        await conn.close()
