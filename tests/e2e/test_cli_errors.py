"""`serve`, `migrate` and the operator commands fail with one plain `error: ...` line and
exit 2 (never a traceback) when the database cannot be used; migrations at startup are
not cut short by the pool's 10 s command timeout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from e2e.clitools import ENV, EXE, assert_plain_error, cli
from potato_runs.cli import _describe
from potato_runs.storage.migrate import _MIGRATION_LOCK


def with_database(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


def with_password(dsn: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://potato:{password}@{rest.split('@', 1)[1]}"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_database_failures_are_one_plain_line_and_exit_2(pg_dsn: str, command: str,
                                                         tmp_path: Path) -> None:
    args = ["--port", "0"] if command == "serve" else []
    cases = {
        with_password(pg_dsn, "wrong-password"): "PostgreSQL refused (28P01)",
        with_database(pg_dsn, "no_such_database"): "PostgreSQL refused (3D000)",
        "nonsense": "invalid DSN",
        "postgresql://potato@127.0.0.1:notaport/potato": "invalid DSN",
        "postgresql://potato@127.0.0.1:99999/potato": "invalid DSN",
        "postgresql://potato@[::1/potato": "invalid DSN",
        "postgresql://potato@127.0.0.1:1/potato": "cannot reach PostgreSQL",
        "postgresql://potato@127.0.0.1/potato?sslmode=bogus": "cannot connect to PostgreSQL",
    }
    for dsn, needle in cases.items():
        res = cli(command, *args, "--dsn", dsn, ok=False)
        assert_plain_error(res, needle)
        assert "wrong-password" not in res.stderr   # the DSN (and its password) is not echoed
        res = cli(command, *args, ok=False, env={**ENV, "POTATO_DSN": dsn})
        assert_plain_error(res, needle)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_missing_postgresql_binaries_are_a_plain_error(command: str, tmp_path: Path) -> None:
    code = ("import glob, shutil, sys; from potato_runs import cli; "
            "shutil.which = lambda *_a, **_k: None; glob.glob = lambda *_a, **_k: []; "
            "sys.argv = ['potato-runs', *sys.argv[1:]]; cli.main()")
    res = subprocess.run([sys.executable, "-c", code, command, "--data-dir", str(tmp_path / "pg")],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**ENV, "POTATO_PG_BINDIR": ""})
    assert_plain_error(res, "were not found", "apt-get install", "--dsn")
    assert not (tmp_path / "pg").exists()


def test_port_must_be_0_to_65535() -> None:
    for port in ("70000", "-1"):
        res = cli("serve", "--port", port, ok=False)
        assert res.returncode == 2 and "Invalid value for '--port'" in res.stderr, res.stderr
    res = cli("serve", ok=False, env={**ENV, "POTATO_PORT": "http"})
    assert_plain_error(res, "invalid POTATO_* environment setting")
    res = cli("serve", ok=False, env={**ENV, "POTATO_PORT": "65536"})
    assert_plain_error(res, "invalid POTATO_* environment setting", "POTATO_PORT",
                       "less than or equal to 65535")


def test_a_timeout_is_reported_as_timed_out() -> None:
    # Python 3.11: TimeoutError is an OSError whose str() is empty.
    assert _describe(TimeoutError()) == "cannot reach PostgreSQL: timed out"
    assert _describe(TimeoutError()) == "cannot reach PostgreSQL: timed out"
    assert _describe(ConnectionRefusedError(111, "Connect call failed")) == \
        "cannot reach PostgreSQL: [Errno 111] Connect call failed"
    assert _describe(KeyError("bug")) is None   # a bug keeps its traceback


def test_operator_commands_refuse_an_unmigrated_database(pg_dsn: str) -> None:
    name = f"potato_empty_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(with_database(pg_dsn, "postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def has_schema_table() -> bool:
        conn = await asyncpg.connect(with_database(pg_dsn, name))
        try:
            return await conn.fetchval("SELECT to_regclass('schema_migrations')") is not None
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        dsn = with_database(pg_dsn, name)
        for args in (["check", "--json"], ["rebuild", "--all"]):
            res = cli(*args, "--dsn", dsn, ok=False)
            assert_plain_error(res, "schema not up to date; run `potato-runs migrate`")
            assert res.stdout == ""
        assert not asyncio.run(has_schema_table())   # nothing was migrated
        res = cli("migrate", "--dsn", dsn)
        assert "applied" in res.stdout
        res = cli("check", "--json", "--dsn", dsn)
        assert '"ok": true' in res.stdout
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_startup_migrations_outlast_the_pools_10_s_command_timeout(pg_dsn: str) -> None:
    """The server waits for another migrator (the advisory lock) for longer than the
    pool's command_timeout (10 s), then starts."""

    async def scenario() -> str:
        holder = await asyncpg.connect(pg_dsn)
        await holder.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        proc = await asyncio.create_subprocess_exec(
            EXE, "serve", "--port", "0", "--dsn", pg_dsn, env=ENV,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            waiting_since = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:   # bounded: until the server waits on the lock
                if await holder.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())"):
                    waiting_since = time.monotonic()
                    break
                assert proc.returncode is None
                await asyncio.sleep(0.05)
            assert waiting_since is not None, "the server never waited for the migration lock"
            while time.monotonic() - waiting_since < 11:   # past the pool's 10 s timeout
                assert proc.returncode is None, await proc.stderr.read()   # type: ignore[union-attr]
                await asyncio.sleep(0.2)
            await holder.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)
            assert proc.returncode == 0
            return line
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await holder.close()

    assert "serving on" in asyncio.run(scenario())
