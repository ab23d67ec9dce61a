"""The embedded default's database roles (storage/roles.py), with the real executable:
a fresh `serve` creates potato_owner and potato_app and connects every session as
potato_app; a cluster created before the roles is upgraded in place, by `serve` or by an
offline operator command."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg

from e2e.clitools import cli, start, stop, wait_until
from potato_runs.storage.embedded import APP_PASSWORD_FILE, EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.roles import APP_ROLE, OWNER_ROLE

USER = "00000000-0000-4000-8000-0000000000aa"


def superuser_dsn(data_dir: Path) -> str:
    """The running cluster's superuser DSN (its port from postmaster.pid)."""
    cluster = EmbeddedPostgres(data_dir)
    cluster.port = int((data_dir / "data" / "postmaster.pid").read_text().splitlines()[3])
    return cluster.dsn("potato")


def query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    async def go() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(go())


SESSIONS = ("SELECT DISTINCT usename FROM pg_stat_activity "
            "WHERE datname = 'potato' AND application_name LIKE 'potato-runs%'")
OWNERS = ("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
          "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")


def assert_least_privilege(data_dir: Path) -> None:
    """While `serve` runs: its sessions (pools and LISTEN) are potato_app's, the owner
    role owns every table, and the password file is private."""
    dsn = superuser_dsn(data_dir)
    assert wait_until(lambda: bool(query(dsn, SESSIONS)))
    assert query(dsn, SESSIONS) == [(APP_ROLE,)]
    assert query(dsn, OWNERS) == [(OWNER_ROLE,)]
    assert query(dsn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'potato_owner'") \
        == [(False,)]
    mode = (data_dir / APP_PASSWORD_FILE).stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.geteuid()


def test_a_fresh_embedded_server_connects_as_potato_app(data_dir: Path) -> None:
    proc, target = start(data_dir)
    try:
        assert_least_privilege(data_dir)
        res = cli("mark", USER, "2026-11-20", "--tz", "UTC", "--target", target)
        assert "2026-11-20" in res.stdout
    finally:
        stop(proc)
    # Offline operator commands work as potato_app: they only read and write rows.
    assert '"ok": true' in cli("check", "--offline", "--json", "--data-dir", str(data_dir)).stdout
    proc, _ = start(data_dir)   # a restart keeps the same password and roles
    try:
        assert_least_privilege(data_dir)
    finally:
        stop(proc)


def old_cluster(data_dir: Path) -> None:
    """A cluster as `serve` made it before the roles: migrated by the superuser."""
    cluster = EmbeddedPostgres(data_dir)
    cluster.start()
    try:
        async def prepare() -> None:
            await ensure_database(cluster.dsn("postgres"), "potato")
            conn = await asyncpg.connect(cluster.dsn("potato"))
            try:
                await migrate(conn)
                await conn.execute(
                    "INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')", USER)
                assert not await conn.fetchval(
                    "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'potato\\_%'")
            finally:
                await conn.close()

        asyncio.run(prepare())
    finally:
        cluster.stop()
    assert not (data_dir / APP_PASSWORD_FILE).exists()


def test_serve_upgrades_a_cluster_created_before_the_roles(data_dir: Path) -> None:
    old_cluster(data_dir)
    proc, target = start(data_dir)
    try:
        assert_least_privilege(data_dir)
        res = cli("mark", USER, "2026-11-20", "--tz", "UTC", "--target", target)
        assert "2026-11-20" in res.stdout
    finally:
        stop(proc)


def test_an_offline_command_upgrades_a_cluster_created_before_the_roles(data_dir: Path) -> None:
    old_cluster(data_dir)
    res = cli("rebuild", "--user", USER, "--offline", "--data-dir", str(data_dir))
    assert res.returncode == 0
    assert (data_dir / APP_PASSWORD_FILE).exists()
    proc, _ = start(data_dir)
    try:
        assert_least_privilege(data_dir)
    finally:
        stop(proc)
