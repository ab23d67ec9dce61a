"""The `database-outage` playbook of docs/playbooks.md, run against a real `serve` process
whose PostgreSQL is stopped and started again.

The server's periodic probe is set to 60 s: health turns NOT_SERVING because a call
failed, and SERVING because the probe pings every 0.5 s while the database is down. The
playbook's first command runs during the outage (it must say NOT_SERVING, exit 1); the
database is then started again, and every other command must exit 0.
"""

from __future__ import annotations

import shlex
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e.clitools import ENV, EXE, start, stop, wait_until
from e2e.test_playbooks import playbook
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from support import app_dsn, stoppable_cluster

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def cluster() -> Iterator[EmbeddedPostgres]:
    with stoppable_cluster("e2e-outage", "potato") as pg:
        yield pg


def run(command: str, target: str) -> tuple[int, str]:
    argv = shlex.split(command)
    assert argv[0] == "potato-runs"
    res = subprocess.run([EXE, *argv[1:]], capture_output=True, text=True, timeout=120,
                         env={**ENV, "POTATO_TARGET": target}, check=False)
    return res.returncode, res.stdout + res.stderr


def test_the_database_outage_playbook(cluster: EmbeddedPostgres) -> None:
    commands = playbook("database-outage")
    assert commands[0] == "potato-runs health" and all(
        c.startswith("potato-runs ") for c in commands)
    env = {**ENV, "POTATO_HEALTH_PROBE_INTERVAL": "60"}
    proc, target = start(None, "--dsn", app_dsn(cluster.dsn("potato")),
                         "--migrate-dsn", cluster.dsn("potato"), env=env)
    try:
        user = str(uuid.uuid4())
        with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as ch:
            stub = pb_grpc.RunsServiceStub(ch)
            stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-01",
                                           time_zone="UTC"), timeout=10)
            cluster.stop()
            try:
                with pytest.raises(grpc.RpcError) as err:   # the outage, seen by a call
                    stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-02",
                                                   time_zone="UTC"), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                health = health_pb2_grpc.HealthStub(ch)
                assert wait_until(lambda: health.Check(
                    health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING, 10)
                code, out = run(commands[0], target)
                assert code == 1 and "NOT_SERVING" in out, out
            finally:
                cluster.start()
            for command in commands[1:]:
                code, out = run(command, target)
                assert code == 0, (command, out)
            stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-02",
                                           time_zone="UTC"), timeout=10)
    finally:
        stop(proc)
