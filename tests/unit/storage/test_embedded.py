"""EmbeddedPostgres against real PostgreSQL binaries and real processes: the data
directory is taken safely (no symlink, no foreign directory), one process holds it
at a time, an orphaned cluster is adopted and stopped, and a stale postmaster.pid
is explained. Runs as root (the cluster then runs as `nobody`) or as a normal user."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from potato_runs.storage.embedded import LOCK_FILE, EmbeddedPostgres, EmbeddedPostgresError
from support import alive

SRC = str(Path(__file__).resolve().parents[3] / "src")


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="potato-embedded-"))
    os.chmod(d, 0o755)   # the cluster's user (nobody, as root) must traverse it
    yield d
    for pgdata in d.glob("*/data"):   # never leave a cluster behind
        if (pgdata / "postmaster.pid").exists():
            EmbeddedPostgres(pgdata.parent)._run(
                [str(EmbeddedPostgres(pgdata.parent).bindir / "pg_ctl"), "-D", str(pgdata),
                 "-m", "immediate", "-w", "stop"])
    shutil.rmtree(d, ignore_errors=True)


def cluster_ids(cluster: EmbeddedPostgres) -> tuple[int, int]:
    ids = cluster._ids()
    return ids if ids else (os.geteuid(), os.getegid())


def snapshot(path: Path) -> tuple[int, int, int, bytes]:
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_gid, path.read_bytes()


def wait_until(cond: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():   # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(cond())   # type: ignore[operator]


async def select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


# --------------------------------------------------------------------------- symlinks
def test_planted_symlinks_in_a_fresh_data_dir_are_never_followed(base: Path) -> None:
    victim = base / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    before = snapshot(victim)
    data_dir = base / "pg"
    cluster = EmbeddedPostgres(data_dir)
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, *cluster_ids(cluster))   # as it would be: owned by the cluster user
    (data_dir / "initdb.pw").symlink_to(victim)
    (data_dir / "superuser.password").symlink_to(victim)
    with pytest.raises(EmbeddedPostgresError, match="not empty"):
        cluster.start()
    assert snapshot(victim) == before
    assert not (data_dir / "data").exists()


def test_the_password_file_is_created_exclusively_never_through_a_symlink(base: Path) -> None:
    victim = base / "victim"
    victim.write_text("precious\n")
    before = snapshot(victim)
    data_dir = base / "pg"
    data_dir.mkdir()
    cluster = EmbeddedPostgres(data_dir)
    (data_dir / "superuser.password").symlink_to(victim)
    with pytest.raises(EmbeddedPostgresError, match="symbolic link"):
        cluster._write_password("attacker-chosen")
    assert snapshot(victim) == before


def test_a_symlinked_password_file_of_an_existing_cluster_is_not_read(base: Path) -> None:
    data_dir = base / "pg"
    cluster = EmbeddedPostgres(data_dir, fast_unsafe=True)
    cluster.start()
    cluster.stop()
    secret = base / "secret"
    secret.write_text("root-only-secret\n")
    os.chmod(secret, 0o600)
    (data_dir / "superuser.password").unlink()
    (data_dir / "superuser.password").symlink_to(secret)
    again = EmbeddedPostgres(data_dir, fast_unsafe=True)
    with pytest.raises(EmbeddedPostgresError, match="symbolic link") as err:
        again.start()
    assert "root-only-secret" not in str(err.value)
    assert again._lock_fd is None and not again._running   # released, cluster stopped
    assert not (data_dir / "data" / "postmaster.pid").exists()


def test_initdb_password_goes_through_a_private_temporary_directory(base: Path) -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("potato-initdb-*"))
    data_dir = base / "pg"
    cluster = EmbeddedPostgres(data_dir, fast_unsafe=True)
    cluster.start()
    try:
        assert set(tmp.glob("potato-initdb-*")) == before   # removed after initdb
        assert {p.name for p in data_dir.iterdir()} == {
            "data", LOCK_FILE, "postgres.log", "superuser.password"}
        pw = (data_dir / "superuser.password").stat()
        assert stat.S_IMODE(pw.st_mode) == 0o600 and pw.st_uid == os.geteuid()
        dir_st = data_dir.stat()
        assert stat.S_IMODE(dir_st.st_mode) == 0o700
        assert (dir_st.st_uid, dir_st.st_gid) == cluster_ids(cluster)
        assert asyncio.run(select_one(cluster.dsn("postgres"))) == 1   # scram, with the password
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- foreign dirs
def test_a_non_empty_directory_without_a_cluster_is_refused_untouched(base: Path) -> None:
    foreign = base / "home"
    foreign.mkdir()
    os.chmod(foreign, 0o755)
    (foreign / "notes.txt").write_text("mine\n")
    st = foreign.stat()
    with pytest.raises(EmbeddedPostgresError, match="not empty"):
        EmbeddedPostgres(foreign).start()
    after = foreign.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_shared_directory_like_tmp_is_refused_untouched(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(EmbeddedPostgresError, match="shared directory"):
        EmbeddedPostgres(shared).start()
    st = shared.stat()
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_uid == os.geteuid()
    assert list(shared.iterdir()) == []


def test_create_false_refuses_a_directory_without_a_cluster(base: Path) -> None:
    data_dir = base / "absent"
    with pytest.raises(EmbeddedPostgresError, match="no embedded cluster in"):
        EmbeddedPostgres(data_dir).start(create=False)
    assert not data_dir.exists()


# --------------------------------------------------------------------------- one owner
def test_one_process_at_a_time_holds_the_data_directory(base: Path) -> None:
    data_dir = base / "pg"
    first = EmbeddedPostgres(data_dir, fast_unsafe=True)
    first.start()
    try:
        second = EmbeddedPostgres(data_dir, fast_unsafe=True)
        t0 = time.monotonic()
        with pytest.raises(EmbeddedPostgresError, match=f"{data_dir}.* in use"):
            second.start()
        assert time.monotonic() - t0 < 5   # at once, not after a timeout
        # ... also from another process (flock is per open file, so this is the same test
        # as a second `potato-runs` command):
        code = ("import sys; from pathlib import Path; "
                "from potato_runs.storage.embedded import EmbeddedPostgres as E, "
                "EmbeddedPostgresError as X\n"
                "try: E(Path(sys.argv[1])).start()\n"
                "except X as e: print(e); sys.exit(3)\n")
        res = subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 3 and "in use" in res.stdout, res.stdout + res.stderr
    finally:
        first.stop()
    assert not (data_dir / "data" / "postmaster.pid").exists()
    second = EmbeddedPostgres(data_dir, fast_unsafe=True)
    second.start()   # released by stop()
    second.stop()


def test_an_orphaned_cluster_is_adopted_and_stopped(base: Path) -> None:
    data_dir = base / "pg"
    # A process starts the cluster, then dies by SIGKILL: its lock goes, the cluster stays.
    code = ("import sys; from pathlib import Path; "
            "from potato_runs.storage.embedded import EmbeddedPostgres as E; "
            "c = E(Path(sys.argv[1]), fast_unsafe=True); c.start(); print(c.port, flush=True); "
            "sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    port = int(owner.stdout.readline())
    owner.kill()
    owner.wait(timeout=30)
    pid = int((data_dir / "data" / "postmaster.pid").read_text().split()[0])
    assert alive(pid)

    cluster = EmbeddedPostgres(data_dir, fast_unsafe=True)
    cluster.start()
    assert cluster.port == port   # adopted, not a second postmaster
    assert asyncio.run(select_one(cluster.dsn("postgres"))) == 1
    assert cluster._running
    cluster.stop()
    assert wait_until(lambda: not alive(pid)), "the adopted postmaster was not stopped"
    assert not (data_dir / "data" / "postmaster.pid").exists()


def test_a_stale_pid_file_naming_another_process_is_explained(base: Path) -> None:
    data_dir = base / "pg"
    cluster = EmbeddedPostgres(data_dir, fast_unsafe=True)
    cluster.start()
    pid_file = data_dir / "data" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    cluster.stop()
    uid, gid = cluster_ids(cluster)
    # A live process that is not PostgreSQL (as the cluster's user, so that it looks alive
    # to pg_ctl and postgres), whose PID the stale file names.
    kwargs: dict[str, object] = {"user": uid, "group": gid} if os.geteuid() == 0 else {}
    cat = shutil.which("cat")
    assert cat is not None
    other = subprocess.Popen([cat], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd="/",
                             **kwargs)  # type: ignore[call-overload]
    try:
        pid_file.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
        os.chown(pid_file, uid, gid)
        os.chmod(pid_file, 0o600)
        again = EmbeddedPostgres(data_dir, fast_unsafe=True)
        with pytest.raises(EmbeddedPostgresError) as err:
            again.start()
        message = str(err.value)
        assert "pg_ctl start failed" in message
        assert f"names PID {other.pid}" in message and "postmaster.pid" in message
        assert 'lock file "postmaster.pid" already exists' in message   # the log's tail
        assert "Connect call failed" not in message
        assert again._lock_fd is None
    finally:
        other.kill()
        other.wait(timeout=30)
    # Once that PID is gone, the file is just stale: postgres replaces it and starts.
    recovered = EmbeddedPostgres(data_dir, fast_unsafe=True)
    recovered.start()
    recovered.stop()
