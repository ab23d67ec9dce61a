"""`potato-runs serve --metrics-port`: the process prints where /metrics is, Prometheus can
scrape it over HTTP, and a busy metrics port stops serve with one `error:` line."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid

from integration.test_rebuild_check import create_scratch, drop_scratch
from observability_support import samples, scrape

from e2e.clitools import ENV, EXE, stop
from support import app_dsn

TOKEN = "e2e-metrics-token-" + uuid.uuid4().hex
AENV = {**ENV, "POTATO_ADMIN_TOKEN": TOKEN}


def test_serve_prints_and_serves_the_metrics_endpoint(pg_dsn: str) -> None:
    dsn = asyncio.run(create_scratch(pg_dsn))
    proc = subprocess.Popen([EXE, "serve", "--port", "0", "--dsn", app_dsn(dsn),
                             "--migrate-dsn", dsn, "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**AENV, "POTATO_OTEL_EXPORTER": "none"})
    try:
        assert proc.stdout is not None
        serving = proc.stdout.readline()
        assert "serving on" in serving, serving
        line = proc.stdout.readline()
        assert line.startswith("potato-runs metrics on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        assert url.endswith("/metrics") and not url.endswith(":0/metrics")
        text = scrape(url)
        assert samples(text, "potato_db_pool_connections")   # observed at every scrape
        assert samples(text, "potato_runs_rebuild_failures_total")   # exists at 0
    finally:
        stop(proc)
        asyncio.run(drop_scratch(dsn))


def test_a_busy_metrics_port_stops_serve_with_one_error_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([EXE, "serve", "--port", "0", "--dsn",
                              "postgresql://potato_app@127.0.0.1:1/potato",
                              "--metrics-port", str(port)],
                             capture_output=True, text=True, env=AENV, timeout=60, check=False)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"could not bind the metrics endpoint 127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr
