"""`potato-runs health`: the serving status of every health name of a running server."""

from __future__ import annotations

import json
import time

import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato_runs.cli._common import TargetOpt, app, call, console, show, table, tls_options

NAMES = ("", "potato.runs.v2.RunsService", "potato.runs.v1.RunsService",
         "potato.runs.v2.TotalsService", "potato.runs.v2.AdminService",
         "potato.runs.v2.Invariants")
"""The server's health names (app.py): "" and the services follow the database; the
last one follows the background invariant checker."""
SERVING = health_pb2.HealthCheckResponse.SERVING


def _statuses(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in NAMES}


@app.command()
@tls_options
def health(wait: float = typer.Option(
               0.0, "--wait", min=0.0,
               help="Seconds to keep asking until everything is SERVING (default: ask once)"),
           as_json: bool = typer.Option(False, "--json", help="Print JSON"),
           target: str = TargetOpt) -> None:
    """Serving status of each health name (gRPC health checking); exit 0 when all are
    SERVING, 1 when one is not (e.g. NOT_SERVING: the database does not answer), 2 when
    no server answers."""
    def ask(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
        end = time.monotonic() + wait
        while True:
            statuses = _statuses(stub)
            if all(s == SERVING for s in statuses.values()) or time.monotonic() >= end:
                return statuses
            time.sleep(0.2)   # the next look, while --wait lasts

    statuses = call(target, health_pb2_grpc.HealthStub, ask, exit_code=2)
    names = {name: health_pb2.HealthCheckResponse.ServingStatus.Name(s)
             for name, s in statuses.items()}
    if as_json:
        console.print_json(json.dumps({"services": names}))
    else:
        t = table(None, "service", "status")
        for name, status in names.items():
            t.add_row(name or '"" (server)', status)
        show(t)
    if any(s != SERVING for s in statuses.values()):
        raise typer.Exit(1)
