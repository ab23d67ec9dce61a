"""The Citus tier: a real coordinator and two workers on 127.0.0.1 (storage/embedded_citus.py)
with the schema distributed by `migrate --citus` (storage/citus.py), and a real server on it.

POTATO_CITUS=1 runs every test here; without it only the smoke subset (marked
`citus_smoke`) runs. Citus comes from ../shared/citus/build.sh (scripts/bootstrap.sh
builds it on a fresh machine; the session fixture builds it too when it is missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from potato_runs.app import Migrator
from potato_runs.clock import FixedClock
from potato_runs.storage.embedded_citus import (
    EmbeddedCitus,
    chmod_base,
    ensure_citus,
)
from potato_runs.storage.roles import APP_ROLE
from support import APP_PASSWORD, ServerThread, app_dsn, prepare_roles

FULL = os.environ.get("POTATO_CITUS") == "1"
BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "shared" / "citus" / "build.sh"
SHARDS = 8
"""Shards per distributed table: enough for two (or three) workers to hold several each."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="the full Citus tier runs with POTATO_CITUS=1")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and item.get_closest_marker("citus_smoke") is None:
            item.add_marker(skip)


@dataclass
class Cluster:
    citus: EmbeddedCitus
    dsn: str
    """The coordinator's superuser DSN of `potato`."""
    distributed: list[str]
    """What `migrate --citus` did."""
    seconds: float
    """Build (when needed), start and distribution, in seconds."""

    @property
    def app_dsn(self) -> str:
        return app_dsn(self.dsn)

    def worker_ports(self) -> list[int]:
        return [w.port for w in self.citus.workers if w.port is not None]


async def distribute_schema(citus: EmbeddedCitus) -> list[str]:
    """The roles (CREATE ROLE propagates to the workers), potato_app's node-to-node
    password, then `migrate --citus` as the superuser and the roles again (ownership and
    grants of what the distribution made)."""
    dsn = citus.dsn()
    await prepare_roles(dsn)
    # On every node, not only the coordinator: a delegated write function runs on a
    # worker, and one of its statements Citus cannot run inside the shard (the month
    # totals' CTEs of a backfill) opens connections from there, as potato_app.
    await citus.authorize(APP_ROLE, APP_PASSWORD)
    done = await Migrator(dsn).run(citus=True, shard_count=SHARDS)
    await prepare_roles(dsn)
    return done


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[Cluster]:
    started = time.monotonic()
    ensure_citus(BUILD_SCRIPT)
    base = Path(tempfile.mkdtemp(prefix="potato-citus-"))
    chmod_base(base)
    citus = EmbeddedCitus(base, workers=2)
    try:
        citus.start()
        done = asyncio.run(distribute_schema(citus))
        yield Cluster(citus, citus.dsn(), done, time.monotonic() - started)
    finally:
        citus.stop()
        shutil.rmtree(base, ignore_errors=True)


# The suite's own fixtures, pointed at the cluster: every test of tests/integration that
# a module here imports (research cases, interleavings, concurrency, flags, shadow,
# totals) runs unchanged against the coordinator, through a server whose pools, event
# tail and admin work are those of a Citus deployment.
@pytest.fixture(scope="session")
def pg_dsn(citus_cluster: Cluster) -> str:
    return citus_cluster.dsn


@pytest.fixture(scope="session")
def server(citus_cluster: Cluster, test_clock: FixedClock) -> Iterator[ServerThread]:
    srv = ServerThread(citus_cluster.dsn, test_clock).start()
    try:
        yield srv
    finally:
        srv.stop()
