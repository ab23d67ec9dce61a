"""serve and migrate."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from potato_runs import logs
from potato_runs.cli._common import (
    DataDirOpt,
    DsnOpt,
    _plain_errors,
    _run,
    _settings,
    app,
    console,
)

MigrateDsnOpt = typer.Option(
    None, "--migrate-dsn", help="PostgreSQL DSN of the owner role that runs the migrations "
    "(default: $POTATO_MIGRATE_DSN, else the --dsn role); the server connects with --dsn")


@app.command()
def serve(host: str = typer.Option(None, help="Address to bind (default 127.0.0.1)"),
          port: int = typer.Option(None, min=0, max=65535,
                                   help="Port (default 50051; 0 picks a free one)"),
          dsn: str = DsnOpt, migrate_dsn: str = MigrateDsnOpt, data_dir: Path = DataDirOpt,
          tls_cert: Path = typer.Option(
              None, "--tls-cert", help="PEM certificate chain: serve TLS only "
              "(default: $POTATO_TLS_CERT); reloaded on SIGHUP"),
          tls_key: Path = typer.Option(
              None, "--tls-key", help="PEM private key of --tls-cert, unencrypted "
              "(default: $POTATO_TLS_KEY)"),
          client_ca: Path = typer.Option(
              None, "--client-ca", help="PEM CA bundle: clients must present a certificate "
              "signed by it, mTLS (default: $POTATO_TLS_CLIENT_CA)"),
          auth_policy: Path = typer.Option(
              None, "--auth-policy", help="YAML access policy: identities -> roles "
              "(default: $POTATO_AUTH_POLICY; docs/security.md); reloaded on SIGHUP"),
          otel_grpc_spans: bool = typer.Option(
              None, "--otel-grpc-spans", help="A span per RPC (opentelemetry-instrumentation-grpc; "
              "default: $POTATO_OTEL_GRPC_SPANS, off); needs POTATO_OTEL_EXPORTER"),
          otel_asyncpg_spans: bool = typer.Option(
              None, "--otel-asyncpg-spans", help="A span per SQL statement "
              "(default: $POTATO_OTEL_ASYNCPG_SPANS, off); needs POTATO_OTEL_EXPORTER"),
          metrics_port: int = typer.Option(
              None, "--metrics-port", min=0, max=65535,
              help="Serve /metrics for Prometheus on this port (0 picks a free one and "
              "prints it; default: $POTATO_METRICS_PORT, else off)"),
          metrics_host: str = typer.Option(
              None, "--metrics-host", help="Address of the /metrics endpoint (default: "
              "$POTATO_METRICS_HOST, else the serve host)"),
          log_format: str = typer.Option(
              None, "--log-format", help="json, text or auto: text on a terminal, JSON lines "
              "elsewhere (default: $POTATO_LOG_FORMAT, else auto)"),
          workers: str = typer.Option(
              None, "--workers", help="Server processes: N, or auto (one per core); N > 1 "
              "runs a supervisor and N workers sharing the port (SO_REUSEPORT); worker i "
              "serves /metrics on --metrics-port + i (default: $POTATO_WORKERS, else 1)")
          ) -> None:
    """Run the gRPC server (embedded PostgreSQL when no DSN is given).
    Exits 2 with `error: ...` when it cannot start. SIGHUP reloads the TLS files and the
    access policy. With --workers N > 1, a supervisor restarts a worker that dies and
    forwards SIGTERM, SIGINT and SIGHUP to them (docs/architecture.md)."""
    from potato_runs.app import App, build_app
    from potato_runs.transport.tls import exposure_warnings

    with _plain_errors():
        settings = _settings(host=host, port=port, dsn=dsn, migrate_dsn=migrate_dsn,
                             data_dir=data_dir,
                             tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=client_ca,
                             auth_policy=auth_policy, otel_grpc_spans=otel_grpc_spans,
                             otel_asyncpg_spans=otel_asyncpg_spans,
                             log_format=log_format.lower() if log_format else None,
                             metrics_port=metrics_port, metrics_host=metrics_host,
                             workers=workers)
    logs.configure(settings.log_level, settings.log_format)   # JSON lines unless a terminal
    for warning in exposure_warnings(settings):
        logging.getLogger("potato_runs.serve").warning("%s", warning)
    if settings.workers > 1:
        from potato_runs.cli.workers import serve_group

        with _plain_errors():
            code = _run(serve_group(settings))
        raise typer.Exit(code)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started: list[App] = []

        def reload() -> None:   # SIGHUP: reload the TLS files; ignored during startup
            for running in started:
                running.reload()

        loop.add_signal_handler(signal.SIGHUP, reload)
        application = await build_app(settings)
        started.append(application)
        where = "embedded PostgreSQL in " + str(settings.data_dir) if settings.dsn is None \
            else "PostgreSQL at the given DSN"
        print(f"potato-runs serving on {settings.host}:{application.port} ({where})", flush=True)
        if (endpoint := application.providers.metrics_endpoint) is not None:
            print(f"potato-runs metrics on http://{endpoint.host}:{endpoint.port}/metrics",
                  flush=True)
        try:
            await stop.wait()
        finally:
            print("potato-runs shutting down", flush=True)
            await application.stop()

    with _plain_errors():
        _run(main())


@app.command()
def migrate(dsn: str = DsnOpt, migrate_dsn: str = MigrateDsnOpt,
            data_dir: Path = DataDirOpt,
            citus: bool = typer.Option(
                False, "--citus",
                help="Also distribute the schema on Citus (the citus extension must be in "
                     "the database, the workers added): docs/decisions.adrs.md ADR-0006. A schema "
                     "distributed already is kept distributed without it."),
            shard_count: int | None = typer.Option(
                None, "--shard-count", min=1, max=4096,
                help="Shards of the distributed tables (Citus's default: 32); only when "
                     "they are first distributed.")) -> None:
    """Apply pending schema migrations as the owner role (--migrate-dsn, else --dsn, else
    the embedded cluster, created when needed), then grant potato_app what it needs.
    Exits 2 with `error: ...` when it cannot."""
    from potato_runs.app import Migrator, open_database

    async def main() -> list[str]:
        settings = _settings(dsn=dsn, migrate_dsn=migrate_dsn, data_dir=data_dir)
        owner = settings.migrate_dsn or settings.dsn
        if owner is not None:   # no pool: the serving role need not exist yet
            return await Migrator(owner).run(citus=citus, shard_count=shard_count)
        db = await open_database(settings, run_migrations=False)
        try:
            assert db.migrator is not None
            return await db.migrator.run(citus=citus, shard_count=shard_count)
        finally:
            await db.close()

    with _plain_errors():
        applied = _run(main())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")

