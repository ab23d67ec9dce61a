"""`potato-runs` and its embedded cluster as processes: one process per data directory,
the cluster stops with the server whatever happened (a failed bind, a failed migration,
an earlier `kill -9`), a stale postmaster.pid is explained, and operator commands never
create a cluster nor migrate."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import asyncpg

from e2e.clitools import assert_plain_error, cli, postmaster_pid, start, stop, wait_until
from potato_runs.storage.embedded import EmbeddedPostgres
from support import alive


def test_a_second_command_on_a_held_data_dir_fails_at_once(data_dir: Path) -> None:
    proc, _target = start(data_dir)
    try:
        for args in (["serve", "--port", "0"], ["check", "--offline"],
                     ["rebuild", "--all", "--offline"], ["migrate"]):
            t0 = time.monotonic()
            res = cli(*args, "--data-dir", str(data_dir), ok=False)
            assert_plain_error(res, str(data_dir), "in use by another potato-runs process")
            assert time.monotonic() - t0 < 15, args   # at once: no waiting on the lock
        assert proc.poll() is None   # the first server is unharmed
    finally:
        stop(proc)
    assert postmaster_pid(data_dir) is None


def test_after_kill_9_the_next_server_adopts_the_cluster_and_stops_it(data_dir: Path) -> None:
    proc, _ = start(data_dir)
    orphan = postmaster_pid(data_dir)
    assert orphan is not None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert alive(orphan)   # the killed server could not stop its cluster

    proc, target = start(data_dir)
    assert postmaster_pid(data_dir) == orphan   # adopted, not a second postmaster
    res = cli("active", "00000000-0000-4000-8000-000000000001", "--target", target)
    assert "no check-ins yet" in res.stdout
    stop(proc)
    assert wait_until(lambda: not alive(orphan)), "the adopted cluster was left running"
    assert postmaster_pid(data_dir) is None


def test_a_stale_postmaster_pid_of_another_process_is_explained(data_dir: Path) -> None:
    cli("migrate", "--data-dir", str(data_dir))
    pgdata = data_dir / "data"
    owner = pgdata.stat()
    cluster = EmbeddedPostgres(data_dir)
    cluster.start()
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    cluster.stop()
    cat = shutil.which("cat")
    assert cat is not None
    kwargs: dict[str, object] = ({"user": owner.st_uid, "group": owner.st_gid}
                                 if os.geteuid() == 0 else {})
    other = subprocess.Popen([cat], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd="/",
                             **kwargs)  # type: ignore[call-overload]
    try:
        pid_file = pgdata / "postmaster.pid"
        pid_file.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
        os.chown(pid_file, owner.st_uid, owner.st_gid)
        for args in (["serve", "--port", "0"], ["check", "--offline"]):
            res = cli(*args, "--data-dir", str(data_dir), ok=False)
            assert_plain_error(res, "pg_ctl start failed", f"names PID {other.pid}",
                               'lock file "postmaster.pid" already exists')
            assert "Connect call failed" not in res.stderr
    finally:
        other.kill()
        other.wait(timeout=30)


def test_a_failed_bind_exits_2_before_any_cluster_starts(data_dir: Path) -> None:
    res = cli("serve", "--host", "203.0.113.5", "--port", "0", "--data-dir", str(data_dir),
              ok=False)
    assert_plain_error(res, "could not bind 203.0.113.5:0")
    assert postmaster_pid(data_dir) is None   # not orphaned
    assert not (data_dir / "data").exists()   # the bind fails before any cluster is created


def test_a_failed_migration_at_startup_stops_the_cluster(data_dir: Path) -> None:
    cli("migrate", "--data-dir", str(data_dir))
    cluster = EmbeddedPostgres(data_dir)

    async def tamper() -> None:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            await conn.execute("UPDATE schema_migrations SET checksum = 'x' "
                               "WHERE version = (SELECT min(version) FROM schema_migrations)")
        finally:
            await conn.close()

    cluster.start()
    try:
        asyncio.run(tamper())
    finally:
        cluster.stop()
    res = cli("serve", "--port", "0", "--data-dir", str(data_dir), ok=False)
    assert_plain_error(res, "was changed after it was applied")
    assert postmaster_pid(data_dir) is None
    res = cli("check", "--offline", "--data-dir", str(data_dir), ok=False)
    assert_plain_error(res, "was changed after it was applied")
    assert postmaster_pid(data_dir) is None


def test_a_non_empty_directory_is_never_taken_over(data_dir: Path) -> None:
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    (data_dir / "notes.txt").write_text("mine\n")
    before = data_dir.stat()
    for args in (["serve", "--port", "0"], ["migrate"]):
        res = cli(*args, "--data-dir", str(data_dir), ok=False)
        assert_plain_error(res, str(data_dir), "not empty")
    after = data_dir.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_uid) == (0o755, before.st_uid)
    assert [p.name for p in data_dir.iterdir()] == ["notes.txt"]


def test_operator_commands_never_create_a_cluster(data_dir: Path) -> None:
    for args in (["check"], ["rebuild", "--all"], ["rebuild", "--user",
                                                   "00000000-0000-4000-8000-000000000001"]):
        res = cli(*args, "--offline", "--data-dir", str(data_dir), ok=False)
        assert_plain_error(res, f"no embedded cluster in {data_dir}", "potato-runs serve",
                           "--dsn")
    assert not data_dir.exists()


def test_operator_commands_never_migrate_an_embedded_cluster(data_dir: Path) -> None:
    cluster = EmbeddedPostgres(data_dir)   # a cluster, but no `potato` database yet
    cluster.start()
    cluster.stop()
    res = cli("check", "--offline", "--data-dir", str(data_dir), ok=False)
    assert_plain_error(res, "schema not up to date; run `potato-runs migrate`")
    cli("migrate", "--data-dir", str(data_dir))
    res = cli("check", "--offline", "--data-dir", str(data_dir), "--json")
    assert '"ok": true' in res.stdout
    assert postmaster_pid(data_dir) is None
