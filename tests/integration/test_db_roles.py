"""Least privilege in PostgreSQL (storage/roles.py): the server connects as potato_app,
which can read and write rows through the service's tables and functions but can
change no schema: every DDL is refused with SQLSTATE 42501. Migrations run as the
owner role, and whatever table they add reaches potato_app without a grant of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.app import build_app
from potato_runs.config import Settings
from potato_runs.storage.migrate import migrate
from potato_runs.storage.roles import APP_ROLE, OWNER_ROLE, TABLE_PRIVILEGES
from support import ADMIN_TOKEN, ServerThread, app_dsn

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture
async def app_conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as potato_app, the role every test server uses."""
    conn = await asyncpg.connect(app_dsn(pg_dsn))
    try:
        yield conn
    finally:
        await conn.close()


async def new_database(pg_dsn: str) -> str:
    """An empty database of its own owned by the owner role, as docs/security.md has an
    operator create it; returns its superuser DSN."""
    name = f"potato_roles_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(with_database(pg_dsn, "postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
    finally:
        await conn.close()
    return with_database(pg_dsn, name)


async def drop_database(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    assert name.startswith("potato_roles_")
    conn = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --------------------------------------------------------------------------- DDL refused
DDL = {
    "create table": "CREATE TABLE intruder (id int)",
    "drop table": "DROP TABLE runs",
    "drop table cascade": "DROP TABLE daily_checkins CASCADE",
    "truncate": "TRUNCATE runs",
    "truncate facts": "TRUNCATE daily_checkins, runs, users",
    "alter table add column": "ALTER TABLE runs ADD COLUMN intruder int",
    "alter table drop constraint": "ALTER TABLE runs DROP CONSTRAINT runs_no_overlap",
    "alter table disable trigger": "ALTER TABLE feature_flags DISABLE TRIGGER ALL",
    "create index": "CREATE INDEX intruder ON runs (day_count)",
    "create function": "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "replace a write function": (
        "CREATE OR REPLACE FUNCTION potato_lock_key(p_user uuid) RETURNS bigint "
        "LANGUAGE sql AS 'SELECT 0::bigint'"),
    "drop function": "DROP FUNCTION potato_lock_key(uuid)",
    "create schema": "CREATE SCHEMA intruder",
    "create temp table": "CREATE TEMP TABLE intruder (id int)",
    "create extension": "CREATE EXTENSION IF NOT EXISTS pgcrypto",
    "rewrite the migration log": "DELETE FROM schema_migrations",
    "forge a migration": "INSERT INTO schema_migrations (version, checksum) VALUES ('9', 'x')",
    "become superuser": f"ALTER ROLE {APP_ROLE} SUPERUSER",
    "create role": "CREATE ROLE intruder",
}


@pytest.mark.parametrize("statement", DDL.values(), ids=list(DDL))
async def test_potato_app_gets_42501_for_ddl(app_conn: asyncpg.Connection,
                                            statement: str) -> None:
    tx = app_conn.transaction()
    await tx.start()
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as err:
            await app_conn.execute(statement)
    finally:
        await tx.rollback()
    assert err.value.sqlstate == "42501"


async def test_potato_app_reaches_no_other_database(pg_dsn: str) -> None:
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as err:
        await asyncpg.connect(with_database(app_dsn(pg_dsn), "postgres"))
    assert err.value.sqlstate == "42501"


# --------------------------------------------------------------------------- what it may do
async def test_potato_app_marks_a_day_through_the_write_function(
        app_conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    result = await app_conn.fetchval(
        "SELECT potato_mark_day($1, $2, NULL, $3, 'v2', $4, NULL)",
        user, dt.date(2026, 11, 20), "America/New_York", NOW)
    assert result is not None
    assert await app_conn.fetchval("SELECT current_user") == APP_ROLE
    runs = await db.fetch("SELECT start_date, day_count, active FROM runs WHERE user_id = $1",
                          user)
    assert [tuple(r) for r in runs] == [(dt.date(2026, 11, 20), 1, True)]


async def test_potato_app_has_exactly_its_grants(db: asyncpg.Connection) -> None:
    """DML on the service's tables (SELECT only on schema_migrations), USAGE on their
    sequences, EXECUTE on their functions; it owns nothing and can create nothing."""
    role = await db.fetchrow(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = $1", APP_ROLE)
    assert tuple(role) == (False, False, False, False, True)
    owned = await db.fetchval(
        """SELECT count(*) FROM (
               SELECT relowner AS o FROM pg_class UNION ALL SELECT proowner FROM pg_proc
               UNION ALL SELECT nspowner FROM pg_namespace UNION ALL SELECT datdba FROM pg_database
               UNION ALL SELECT typowner FROM pg_type) x
            WHERE o = (SELECT oid FROM pg_roles WHERE rolname = $1)""", APP_ROLE)
    assert owned == 0
    assert not await db.fetchval(
        "SELECT has_schema_privilege($1, 'public', 'CREATE') "
        "OR has_database_privilege($1, current_database(), 'CREATE') "
        "OR has_database_privilege($1, current_database(), 'TEMP')", APP_ROLE)
    tables = await db.fetch(
        """SELECT c.relname,
                  array(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                   'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
                         WHERE has_table_privilege($1, c.oid, p)) AS privileges
             FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')""",
        APP_ROLE)
    names = {t["relname"] for t in tables}
    assert {"users", "daily_checkins", "runs", "run_events", "feature_flags",
            "schema_migrations"} <= names
    for t in tables:
        want = ["SELECT"] if t["relname"] == "schema_migrations" else list(TABLE_PRIVILEGES)
        assert list(t["privileges"]) == want, t["relname"]
    missing = await db.fetch(
        """SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'potato\\_%'
              AND NOT has_function_privilege($1, p.oid, 'EXECUTE')""", APP_ROLE)
    assert missing == []
    public_may_run = await db.fetch(
        """SELECT p.oid::regprocedure::text FROM pg_proc p,
                  aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'potato\\_%'
              AND a.grantee = 0""")
    assert public_may_run == []
    sequences = await db.fetch(
        """SELECT c.relname FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
              AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege($1, c.oid, 'USAGE')
                  END""", APP_ROLE)
    assert sequences == []


async def test_the_test_server_connects_as_potato_app(server: ServerThread) -> None:
    assert server.app is not None
    pool = server.app.database.pool

    async def who() -> str:
        async with pool.acquire() as conn:
            return str(await conn.fetchval("SELECT current_user"))

    assert server.run(who()) == APP_ROLE


async def test_a_table_of_a_later_migration_reaches_potato_app(pg_dsn: str) -> None:
    """The grants are re-applied by every migrate(): a table the owner adds later (as
    migration 0007 did, and the next one will) needs no GRANT of its own."""
    dsn = await new_database(pg_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"SET ROLE {OWNER_ROLE}")   # as the embedded default does
            await migrate(conn)
            await conn.execute("CREATE TABLE later (id int)")
            await migrate(conn)
            # `serve --dsn` with a superuser DSN: it grants on whatever it may grant.
            await conn.execute("RESET ROLE; CREATE TABLE later_still (id int)")
            await migrate(conn)
        finally:
            await conn.close()
        app = await asyncpg.connect(app_dsn(dsn))
        try:
            for table in ("later", "later_still", "request_ids"):
                await app.execute(f"INSERT INTO {table} DEFAULT VALUES" if table != "request_ids"
                                  else "SELECT count(*) FROM request_ids")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await app.execute("TRUNCATE later")
        finally:
            await app.close()
    finally:
        await drop_database(dsn)


# --------------------------------------------------------------------------- serve --dsn
async def test_serve_with_both_dsns_migrates_as_owner_and_serves_as_potato_app(
        pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    dsn = await new_database(pg_dsn)
    try:
        settings = Settings(port=0, dsn=app_dsn(dsn), migrate_dsn=dsn, admin_token=ADMIN_TOKEN,
                            invariant_check_interval=0, health_probe_interval=0,
                            totals_reconcile_at=None)
        with caplog.at_level(logging.WARNING, logger="potato_runs.app"):
            app = await build_app(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
                stub = runs_service_pb2_grpc.RunsServiceStub(ch)
                res = await stub.MarkDay(pb.MarkDayRequest(
                    user_id=str(uuid.uuid4()), local_date="2026-11-20", time_zone="UTC"),
                    timeout=10)
            assert res.run.day_count == 1
            async with app.database.pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == APP_ROLE
        finally:
            await app.stop(0)
        assert "can change the schema" not in caplog.text
    finally:
        await drop_database(dsn)


async def test_serve_dsn_alone_as_potato_app_cannot_migrate(pg_dsn: str) -> None:
    """Pending migrations need the owner: potato_app alone is refused (42501), and
    `serve` says so in one line (cli._common: PostgreSQL refused (42501) ...)."""
    dsn = await new_database(pg_dsn)
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await build_app(Settings(port=0, dsn=app_dsn(dsn), admin_token=ADMIN_TOKEN,
                                     invariant_check_interval=0, health_probe_interval=0,
                                     totals_reconcile_at=None))
    finally:
        await drop_database(dsn)


@pytest.mark.parametrize("as_app", [False, True], ids=["superuser", "potato_app"])
async def test_serve_dsn_alone_warns_when_the_serving_role_can_run_ddl(
        pg_dsn: str, caplog: pytest.LogCaptureFixture, as_app: bool) -> None:
    """`serve --dsn` with one role still works (migrates and serves with it), but a role
    that could change the schema gets a WARNING; potato_app, up to date, gets none."""
    settings = Settings(port=0, dsn=app_dsn(pg_dsn) if as_app else pg_dsn,
                        admin_token=ADMIN_TOKEN, invariant_check_interval=0,
                        health_probe_interval=0, totals_reconcile_at=None)
    with caplog.at_level(logging.WARNING, logger="potato_runs.app"):
        app = await build_app(settings)
    await app.stop(0)
    warned = [r for r in caplog.records if "can change the schema" in r.getMessage()]
    if as_app:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert "superuser" in warned[0].getMessage()
        assert "POTATO_MIGRATE_DSN" in warned[0].getMessage()


# --------------------------------------------------------------------------- the docs' SQL
def security_sql() -> list[str]:
    """The ```sql postgres blocks of docs/security.md's "Database roles" section."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    section = text.split("## Database roles", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sql postgres\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


async def test_the_documented_sql_gives_an_operators_database_least_privilege(
        pg_dsn: str) -> None:
    """The operator's recipe, for real on a database of its own: the docs' SQL, then
    `migrate` as the owner; potato_app may then write but not change the schema."""
    blocks = security_sql()
    assert blocks, "docs/security.md has no ```sql postgres block under Database roles"
    dsn = await new_database(pg_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            for block in blocks:
                await conn.execute(block)
            await conn.execute(f"SET ROLE {OWNER_ROLE}")   # NOLOGIN in the test cluster
            assert await migrate(conn)
            assert await conn.fetchval(
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'runs'") \
                == OWNER_ROLE
        finally:
            await conn.close()
        app = await asyncpg.connect(app_dsn(dsn))
        try:
            await app.fetchval("SELECT potato_mark_day($1, $2, NULL, 'UTC', 'v2', $3, NULL)",
                               uuid.uuid4(), dt.date(2026, 11, 20), NOW)
            for statement in ("CREATE TABLE intruder (id int)", "DROP TABLE runs",
                              "TRUNCATE runs", "ALTER TABLE runs ADD COLUMN x int",
                              "CREATE TEMP TABLE intruder (id int)"):
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await app.execute(statement)
        finally:
            await app.close()
    finally:
        await drop_database(dsn)
