"""The real `potato-runs` executable: embedded PostgreSQL, signals, persistence, CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.clitools import ENV, cli, start, stop


def test_serve_embedded_persists_across_restarts_and_stops_cleanly(data_dir: Path) -> None:
    user = str(uuid.uuid4())
    proc, target = start(data_dir)
    try:
        with grpc.insecure_channel(target) as ch:
            res = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert res.status == health_pb2.HealthCheckResponse.SERVING
        out = cli("mark", user, "2025-06-15", "--tz", "America/New_York", "--target", target)
        assert "created" in out.stdout
        out = cli("mark", user, "2025-06-16", "--target", target)
        assert "extended" in out.stdout and "2 days" in out.stdout
        bad = cli("mark", user, "2024-12-31", "--target", target, ok=False)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    finally:
        assert "shutting down" in stop(proc)
    # The embedded cluster stopped with the server ...
    assert not (data_dir / "data" / "postmaster.pid").exists()
    # ... and the data is still there after a restart.
    proc, target = start(data_dir)
    try:
        out = cli("runs", user, "--target", target)
        assert "2025-06-15" in out.stdout and "2025-06-16" in out.stdout
        out = cli("active", user, "--target", target)
        assert "2 days" in out.stdout
        out = cli("backfill", user, "2025-06-17", "2025-06-18", "--target", target)
        assert "added 2 day(s)" in out.stdout and "2025-06-15" in out.stdout
        out = cli("unmark", user, "2025-06-16", "--target", target)
        assert "split" in out.stdout and "2025-06-17" in out.stdout
    finally:
        # Ctrl-C is a graceful shutdown too, and it stops the embedded cluster.
        assert "shutting down" in stop(proc, signal.SIGINT)
    assert not (data_dir / "data" / "postmaster.pid").exists()


def test_operator_commands_against_the_embedded_cluster(data_dir: Path) -> None:
    res = cli("migrate", "--data-dir", str(data_dir))
    assert "applied" in res.stdout
    res = cli("migrate", "--data-dir", str(data_dir))
    assert "up to date" in res.stdout
    res = cli("check", "--offline", "--data-dir", str(data_dir), "--json")
    assert '"ok": true' in res.stdout
    res = cli("rebuild", "--all", "--offline", "--data-dir", str(data_dir), "--json")
    assert '"users_scanned": 0' in res.stdout


def test_missing_postgres_binaries_are_explained(tmp_path: Path) -> None:
    code = ("import glob, shutil; "
            "from potato_runs.storage import embedded; "
            "shutil.which = lambda *_a, **_k: None; glob.glob = lambda *_a, **_k: []; "
            "embedded.find_pg_bindir()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**ENV, "POTATO_PG_BINDIR": ""}, check=False)
    assert res.returncode != 0
    assert "apt-get install" in res.stderr and "--dsn" in res.stderr


def test_refused_login_exits_2_not_1(pg_dsn: str) -> None:
    # pg_dsn is postgresql://potato:<password>@127.0.0.1:<port>/potato_test
    scheme, rest = pg_dsn.split("://", 1)
    host = rest.split("@", 1)[1]
    res = cli("check", "--dsn", f"{scheme}://potato:wrong-password@{host}", "--json", ok=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "28P01" in res.stderr and res.stdout == ""
