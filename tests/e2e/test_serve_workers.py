"""`potato-runs serve --workers 2`: real processes, a supervisor and two workers sharing
one port (SO_REUSEPORT), the embedded PostgreSQL in a temporary directory, port 0."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.clitools import ENV, EXE, assert_plain_error, cli, wait_until
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2 import runs_service_pb2_grpc as v2_grpc
from potato_runs.storage.embedded import find_pg_bindir
from support import fresh_database

GROUP_ENV = {**ENV, "POTATO_INVARIANT_CHECK_INTERVAL": "0.3", "POTATO_LOG_FORMAT": "json"}


@dataclass
class Group:
    proc: subprocess.Popen[str]
    target: str
    log: Path
    metrics: list[str]

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    def workers(self) -> dict[int, int]:
        """Worker index -> pid, of the supervisor's live children."""
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and b"--worker" in argv:
                out[int(argv[argv.index(b"--worker") + 1])] = int(entry.name)
        return out

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(ln) for ln in self.log.read_text().splitlines()
                if ln.startswith("{")]


def start_group(log: Path, *args: str) -> Group:
    with log.open("w") as err:
        proc = subprocess.Popen([EXE, "serve", "--port", "0", "--workers", "2", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=GROUP_ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline()   # once every worker serves (or the group failed)
    assert "serving on" in line and "2 workers" in line, (line, log.read_text())
    metrics = [proc.stdout.readline() for _ in range(2)] if "--metrics-port" in args else []
    assert all(m.startswith("potato-runs metrics on http://") for m in metrics), metrics
    return Group(proc, line.split(" on ")[1].split()[0], log,
                 [m.split(" on ")[1].split()[0] for m in metrics])


def stop_group(group: Group, sig: int = signal.SIGTERM) -> str:
    group.proc.send_signal(sig)
    out, _ = group.proc.communicate(timeout=60)
    assert group.proc.returncode == 0, (out, group.log.read_text())
    return out


def listening_pids(port: int) -> set[int]:
    """The pids holding a listening TCP socket on `port` (/proc/net/tcp{,6}: state 0A)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
            except OSError:
                continue
            if links & inodes:
                pids.add(int(entry.name))
    return pids


def calls_succeed(target: str, channels: int = 8) -> bool:
    """A MarkDay and a health check on each of `channels` channels, each its own TCP
    connection (the kernel spreads connections, not calls, over the workers)."""
    for _ in range(channels):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            res = v2_grpc.RunsServiceStub(ch).MarkDay(v2.MarkDayRequest(
                user_id=str(uuid.uuid4()), local_date="2025-06-15", time_zone="UTC"), timeout=10)
            assert res.run.day_count == 1
    return True


def pass_pids(data_dir: Path) -> list[int]:
    """The pid of the process that ran each stored invariant pass (replica host:pid:tag)."""
    port = (data_dir / "data" / "postmaster.pid").read_text().splitlines()[3].strip()
    password = (data_dir / "superuser.password").read_text().strip()

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(f"postgresql://potato:{password}@127.0.0.1:{port}/potato")
        try:
            rows = await conn.fetch("SELECT replica FROM invariant_check_runs ORDER BY pass_id")
        finally:
            await conn.close()
        return [int(r["replica"].rsplit(":", 2)[1]) for r in rows]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="potato-e2e-workers-"))
    os.chmod(base, 0o755)
    yield base
    for pid_file in base.glob("*/data/postmaster.pid"):   # a cluster a failed test left
        subprocess.run([str(find_pg_bindir() / "pg_ctl"), "-D", str(pid_file.parent), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=60, check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def group(base: Path) -> Iterator[Group]:
    running = start_group(base / "group.log", "--data-dir", str(base / "pgdata"),
                          "--metrics-port", "0")
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(timeout=30)


def test_both_workers_listen_on_the_port_and_serve_calls(group: Group) -> None:
    workers = group.workers()
    assert sorted(workers) == [0, 1]
    assert wait_until(lambda: listening_pids(group.port) == set(workers.values()))
    assert group.proc.pid not in listening_pids(group.port)   # it holds the port, unlistened
    assert calls_succeed(group.target, channels=12)
    logged = {line.get("worker") for line in group.log_lines()}
    assert {0, 1} <= logged
    # --metrics-port 0: each worker serves /metrics on a port of its own, both printed.
    assert len(set(group.metrics)) == 2
    for url in group.metrics:
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b"rpc_server_duration" in page.read()


def test_a_second_server_on_the_port_is_refused(group: Group, base: Path) -> None:
    for extra in ((), ("--workers", "2")):   # a lone server, and a second group
        res = cli("serve", "--port", str(group.port), "--data-dir", str(base / "other"),
                  *extra, ok=False)
        assert_plain_error(res, f"could not bind 127.0.0.1:{group.port}")
    assert not (base / "other").exists()   # refused before any cluster was created
    assert calls_succeed(group.target, channels=2)


def test_only_worker_0_runs_the_background_jobs(group: Group, base: Path) -> None:
    workers = group.workers()
    assert wait_until(lambda: len(pass_pids(base / "pgdata")) >= 6)
    assert set(pass_pids(base / "pgdata")) == {workers[0]}


def test_a_blue_green_rebuild_runs_on_a_worker(group: Group, base: Path) -> None:
    """The workers have the owner connection the supervisor has (the embedded cluster's
    superuser acting as potato_owner), so the rebuild works whichever worker gets it."""
    assert calls_succeed(group.target, channels=2)
    res = cli("rebuild", "--all", "--blue-green", "--json", "--target", group.target,
              "--data-dir", str(base / "pgdata"), timeout=120)
    report = json.loads(res.stdout)
    assert report["rebuild_id"] > 0 and report["old_table_dropped"] is True
    assert report["users_changed"] == 0   # the projection was right: nothing to change
    assert calls_succeed(group.target, channels=2)


def test_a_killed_worker_is_replaced_and_a_new_worker_0_takes_the_jobs(
        group: Group, base: Path) -> None:
    before = group.workers()
    os.kill(before[1], signal.SIGKILL)
    assert wait_until(lambda: group.workers().get(1) not in (None, before[1]))
    assert wait_until(lambda: listening_pids(group.port) == set(group.workers().values()))
    assert calls_succeed(group.target)
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(lambda: group.workers().get(0) not in (None, before[0]))
    after = group.workers()
    assert wait_until(lambda: after[0] in pass_pids(base / "pgdata"))
    assert not {after[1], before[1]} & set(pass_pids(base / "pgdata"))
    assert calls_succeed(group.target)
    restarts = [str(line["message"]) for line in group.log_lines()
                if line.get("logger") == "potato_runs.supervisor"]
    assert any(f"(pid {before[1]}) was killed by SIGKILL; restarting" in m for m in restarts)


def test_sigterm_drains_every_worker_and_stops_the_embedded_cluster(
        group: Group, base: Path) -> None:
    workers = set(group.workers().values())
    assert "shutting down" in stop_group(group)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not (base / "pgdata" / "data" / "postmaster.pid").exists()
    # Each drained on the forwarded SIGTERM: none had to be killed.
    assert not any("did not stop" in str(line["message"]) for line in group.log_lines())


def test_a_killed_supervisor_takes_its_workers_with_it(pg_dsn: str, tmp_path: Path) -> None:
    dsn = fresh_database(pg_dsn, "potato_workers_e2e")
    running = start_group(tmp_path / "group.log", "--dsn", dsn)
    workers = set(running.workers().values())
    assert len(workers) == 2 and calls_succeed(running.target, channels=2)
    running.proc.kill()
    running.proc.wait(timeout=30)
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


def test_a_crash_loop_stops_the_group_with_exit_1(pg_dsn: str, tmp_path: Path) -> None:
    dsn = fresh_database(pg_dsn, "potato_workers_e2e")
    running = start_group(tmp_path / "group.log", "--dsn", dsn)
    workers = set(running.workers().values())
    killed: list[int] = []
    for _ in range(5):   # worker 1 dies five times within 60 s (restarts 0.5, 1, 2, 4 s apart)
        assert wait_until(lambda: running.workers().get(1) not in (None, *killed))
        pid = running.workers()[1]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    out, _ = running.proc.communicate(timeout=60)
    assert running.proc.returncode == 1, (out, running.log.read_text())
    errors = [ln for ln in running.log.read_text().splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "crash loop" in errors[0], errors
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
