"""serve and migrate."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import asyncpg
import typer

from potato_runs.cli._common import (
    DataDirOpt,
    DsnOpt,
    _plain_errors,
    _run,
    _settings,
    app,
    console,
)


@app.command()
def serve(host: str = typer.Option(None, help="Address to bind (default 127.0.0.1)"),
          port: int = typer.Option(None, min=0, max=65535,
                                   help="Port (default 50051; 0 picks a free one)"),
          dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Run the gRPC server (embedded PostgreSQL when no DSN is given).
    Exits 2 with `error: ...` when it cannot start."""
    from potato_runs.app import build_app

    with _plain_errors():
        settings = _settings(host=host, port=port, dsn=dsn, data_dir=data_dir)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        application = await build_app(settings)
        where = "embedded PostgreSQL in " + str(settings.data_dir) if settings.dsn is None \
            else "PostgreSQL at the given DSN"
        print(f"potato-runs serving on {settings.host}:{application.port} ({where})", flush=True)
        try:
            await stop.wait()
        finally:
            print("potato-runs shutting down", flush=True)
            await application.stop()

    with _plain_errors():
        _run(main())


@app.command()
def migrate(dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Apply pending schema migrations (creates the embedded cluster when needed).
    Exits 2 with `error: ...` when it cannot."""
    from potato_runs.app import open_database
    from potato_runs.storage.migrate import migrate as run_migrate

    async def main() -> list[str]:
        db = await open_database(_settings(dsn=dsn, data_dir=data_dir), run_migrations=False)
        try:
            # A connection of its own: no pool command_timeout (migrate() bounds its
            # statements), and closing it ends any session lock.
            conn = await asyncpg.connect(db.dsn)
            try:
                return await run_migrate(conn)
            finally:
                await conn.close()
        finally:
            await db.close()

    with _plain_errors():
        applied = _run(main())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")

