"""`potato-runs flags` against a real `potato-runs serve` (subprocesses)."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from support import app_dsn

from .clitools import ADMIN_TOKEN, ENV, assert_plain_error, cli, start, stop

A, B = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))


def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def flag(pg_dsn: str) -> Iterator[str]:
    name = f"ff.test.cli_{uuid.uuid4().hex[:10]}"
    sql(pg_dsn, "INSERT INTO feature_flags (name) VALUES ($1)", name)
    yield name
    sql(pg_dsn, "DELETE FROM feature_flag_changes WHERE name = $1", name)
    sql(pg_dsn, "DELETE FROM feature_flags WHERE name = $1", name)


@pytest.fixture
def target(pg_dsn: str) -> Iterator[str]:
    """`serve --dsn` as potato_app, migrating as the superuser (--migrate-dsn); the
    token comes from POTATO_ADMIN_TOKEN in clitools.ENV."""
    proc, where = start(None, "--dsn", app_dsn(pg_dsn), "--migrate-dsn", pg_dsn)
    try:
        yield where
    finally:
        stop(proc)


def test_set_list_get_and_rollback(target: str, flag: str, pg_dsn: str) -> None:
    res = cli("flags", "set", flag, "--rollout", "12.5", "--shadow", "100%", "--allow", A,
              "--allow", B, "--enable", "--reason", "ramp to 12.5", "--json", "--target", target)
    out = json.loads(res.stdout)
    assert (out["enabled"], out["rollout_percent"], out["shadow_percent"]) == (True, 12.5, 100)
    assert out["allow_user_ids"] == [A, B] and out["update_reason"] == "ramp to 12.5"

    # Only the options given change: --deny alone keeps the rest.
    res = cli("flags", "set", flag, "--deny", str(uuid.UUID(int=13)), "--reason", "deny one",
              "--target", target)
    assert "12.5%" in res.stdout and A in res.stdout
    res = cli("flags", "set", flag, "--clear-allow", "--reason", "no allow", "--json",
              "--target", target)
    assert json.loads(res.stdout)["allow_user_ids"] == []

    # The table never wraps a name or a UUID, even on a narrow terminal width.
    res = cli("flags", "list", "--target", target, env={**ENV, "COLUMNS": "40"})
    assert any(flag in line for line in res.stdout.splitlines()), res.stdout
    assert "ff.potato.runs_v2" in res.stdout
    listed = json.loads(cli("flags", "list", "--json", "--target", target).stdout)
    assert flag in [f["name"] for f in listed]
    res = cli("flags", "get", flag, "--target", target, env={**ENV, "COLUMNS": "30"})
    assert str(uuid.UUID(int=13)) in res.stdout

    res = cli("flags", "rollback", flag, "--reason", "p99 regression", "--target", target)
    assert "disabled" in res.stdout and "legacy" in res.stdout
    got = json.loads(cli("flags", "get", flag, "--json", "--target", target).stdout)
    assert (got["enabled"], got["rollout_percent"]) == (False, 12.5)

    audit = sql(pg_dsn, "SELECT changed_by, reason FROM feature_flag_changes WHERE name = $1 "
                        "ORDER BY change_id", flag)
    assert [a["reason"] for a in audit] == ["ramp to 12.5", "deny one", "no allow",
                                            "p99 regression"]
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    assert all(a["changed_by"].startswith(who + " (") for a in audit), audit


def test_errors_are_one_line_and_exit_2(target: str, flag: str) -> None:
    res = cli("flags", "set", flag, "--rollout", "100.5", "--reason", "r", "--target", target,
              ok=False)
    assert_plain_error(res, "INVALID_ARGUMENT", "rollout_percent")
    res = cli("flags", "set", flag, "--allow", "not-a-uuid", "--allow", "x", "--reason", "r",
              "--target", target, ok=False)
    assert_plain_error(res, "INVALID_ARGUMENT", "allow_user_ids[1]")
    res = cli("flags", "get", "ff.no.such_flag", "--target", target, ok=False)
    assert_plain_error(res, "NOT_FOUND", "flags list")
    res = cli("flags", "set", flag, "--reason", "r", "--target", target, ok=False)
    assert res.returncode == 2 and "nothing to change" in res.stderr
    res = cli("flags", "set", flag, "--enable", "--target", target, ok=False)
    assert res.returncode == 2 and "--reason" in res.stderr
    res = cli("flags", "list", "--target", target, ok=False,
              env={**ENV, "POTATO_ADMIN_TOKEN": "wrong-token-0123456789"})
    assert_plain_error(res, "UNAUTHENTICATED", "POTATO_ADMIN_TOKEN")
    res = cli("flags", "list", "--target", "127.0.0.1:1", ok=False)
    assert_plain_error(res, "no server answers at 127.0.0.1:1", "--target")


def test_serve_with_a_dsn_needs_a_token(pg_dsn: str) -> None:
    env = {k: v for k, v in ENV.items() if k != "POTATO_ADMIN_TOKEN"}
    res = cli("serve", "--port", "0", "--dsn", pg_dsn, ok=False, env=env)
    assert_plain_error(res, "POTATO_ADMIN_TOKEN is not set")
    res = cli("serve", "--port", "0", "--dsn", pg_dsn, ok=False,
              env={**env, "POTATO_ADMIN_TOKEN": "short"})
    assert_plain_error(res, "POTATO_ADMIN_TOKEN")
    assert "short" not in res.stderr   # the token is never echoed


def test_the_embedded_server_writes_a_token_the_cli_finds(data_dir: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "POTATO_ADMIN_TOKEN"}
    proc, where = start(data_dir, env=env)
    try:
        token_file = data_dir / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text().strip() != ADMIN_TOKEN
        res = cli("flags", "list", "--target", where, "--data-dir", str(data_dir), env=env)
        assert "ff.potato.runs_v2" in res.stdout
        res = cli("flags", "list", "--target", where, env=env, ok=False)   # no token found
        assert_plain_error(res, "UNAUTHENTICATED")
    finally:
        stop(proc)
