"""potato-runs: serve, migrate, operate and poke the service from a terminal."""

from __future__ import annotations

import os

# Before grpc is imported: the embedded cluster is driven with subprocesses, and
# gRPC's fork handlers only add noise about them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from potato_runs.cli import (  # noqa: F401  (register commands)
    client,
    events,
    flags,
    health,
    operators,
    serve,
    totals,
)
from potato_runs.cli._common import _describe, app

__all__ = ["_describe", "app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
