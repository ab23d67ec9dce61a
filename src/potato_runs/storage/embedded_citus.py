"""An embedded Citus cluster: a coordinator and N workers on 127.0.0.1, each an
EmbeddedPostgres with Citus preloaded (docs/decisions.adrs.md, ADR-0006).

For the Citus test tier (tests/citus/), the benchmark (scripts/bench_citus.py) and the
scale-out playbook. Every node's superuser has the coordinator's password, which the
nodes give one another through pg_dist_authinfo (the Citus way to authenticate
node-to-node connections); the service's roles get theirs the same way when the schema
is distributed (storage/citus.py).

Citus needs, on every node: `shared_preload_libraries = citus`, prepared transactions
(a write that spans nodes commits with two-phase commit; the service's writes never do,
but the distribution and the rebalancer's metadata changes do), and `wal_level =
logical`, which the rebalancer's shard moves use to copy a shard while it is written.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from potato_runs.storage.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_pg_bindir,
    free_port,
)

CITUS_SETTINGS = {
    "shared_preload_libraries": "citus",
    "max_prepared_transactions": "200",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "citus.max_background_task_executors_per_node": "2",
    # The embedded nodes serve no TLS (loopback only); without this, libpq in the node
    # looks for a client certificate in the home directory of the process's owner.
    "citus.node_conninfo": "sslmode=disable",
}

DATABASE = "potato"


def citus_installed() -> bool:
    """Whether the machine's PostgreSQL has the Citus extension."""
    pg_config = find_pg_bindir() / "pg_config"
    try:
        lib = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True,
                             check=True).stdout.strip()
        share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(lib) / "citus.so").is_file() and \
        (Path(share) / "extension" / "citus.control").is_file()


def ensure_citus(build_script: Path) -> None:
    """Builds and installs Citus with `build_script` (../shared/citus/build.sh) when the
    machine's PostgreSQL lacks it."""
    if citus_installed():
        return
    if not build_script.is_file():
        raise EmbeddedPostgresError(f"Citus is not installed and {build_script} is missing")
    res = subprocess.run(["bash", str(build_script)], capture_output=True, text=True,
                         check=False, timeout=1800)
    if res.returncode != 0 or not citus_installed():
        raise EmbeddedPostgresError(
            f"building Citus with {build_script} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


class EmbeddedCitus:
    """A coordinator (node group 0) and `workers` workers under `base_dir`."""

    def __init__(self, base_dir: Path, *, workers: int = 2, fast_unsafe: bool = True) -> None:
        self.base_dir = Path(base_dir)
        self.fast_unsafe = fast_unsafe
        self.coordinator = self._node("coordinator")
        self.workers: list[EmbeddedPostgres] = [self._node(f"worker{i + 1}")
                                                for i in range(workers)]
        self._roles: dict[str, str] = {}
        """Roles given node-to-node passwords (authorize())."""

    def _node(self, name: str) -> EmbeddedPostgres:
        # A node keeps its port across restarts: pg_dist_node names nodes by host and port.
        port_file = self.base_dir / f"{name}.port"
        if port_file.is_file():
            port = int(port_file.read_text())
        else:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            port = free_port()
            port_file.write_text(str(port))
        return EmbeddedPostgres(self.base_dir / name, port=port, fast_unsafe=self.fast_unsafe,
                                settings=CITUS_SETTINGS)

    @property
    def nodes(self) -> list[EmbeddedPostgres]:
        return [self.coordinator, *self.workers]

    def dsn(self, database: str = DATABASE) -> str:
        """The coordinator's superuser DSN: what the service and the migration use."""
        return self.coordinator.dsn(database)

    def start(self) -> str:
        """Starts every node and joins the workers to the coordinator (idempotent);
        returns the coordinator's DSN of `potato`."""
        try:
            for node in self.nodes:
                node.start()
            asyncio.run(self._join(self.workers))
        except BaseException:
            self.stop()
            raise
        return self.dsn()

    def add_worker(self) -> EmbeddedPostgres:
        """Starts one more worker and adds it to the cluster (no shard moves: that is
        `citus_rebalance_start`, the scale-out playbook)."""
        node = self._node(f"worker{len(self.workers) + 1}")
        node.start()
        self.workers.append(node)
        asyncio.run(self._join([node]))
        return node

    async def authorize(self, role: str, password: str) -> None:
        """`role` authenticates node-to-node with `password`, on every node (a worker
        connects to other nodes too: a delegated call that reaches another shard, a shard
        move); a worker added later gets it as well. pg_dist_authinfo is not synced."""
        self._roles[role] = password
        for node in self.nodes:
            conn = await asyncpg.connect(node.dsn(DATABASE))
            try:
                await set_authinfo(conn, _literal(role), password)
            finally:
                await conn.close()

    async def _join(self, workers: Sequence[EmbeddedPostgres]) -> None:
        password = self.coordinator._read_password()
        for node in [self.coordinator, *workers]:
            await _prepare_node(node, password)
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                               self.coordinator.port)
            for node in workers:   # a no-op for a node already added
                await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", node.port)
        finally:
            await conn.close()
        # After citus_add_node, which creates the roles on a new worker: pg_dist_authinfo
        # accepts existing roles only.
        for node in [self.coordinator, *workers]:
            conn = await asyncpg.connect(node.dsn(DATABASE))
            try:
                for role, secret in self._roles.items():
                    await set_authinfo(conn, _literal(role), secret)
            finally:
                await conn.close()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


async def _prepare_node(node: EmbeddedPostgres, password: str | None) -> None:
    """One node: the coordinator's superuser password, database `potato` with the Citus
    extension, and the superuser's node-to-node password in pg_dist_authinfo."""
    conn = await asyncpg.connect(node.dsn("postgres"))
    try:
        if password is not None:
            await conn.execute(f"ALTER ROLE CURRENT_USER PASSWORD {_literal(password)}")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    if password is not None and node._read_password() != password:
        node._password_file.unlink()
        node._write_password(password)
    conn = await asyncpg.connect(node.dsn(DATABASE))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        if password is not None:
            await set_authinfo(conn, "current_user", password)
    finally:
        await conn.close()


async def set_authinfo(conn: asyncpg.Connection, role_sql: str, password: str) -> None:
    """pg_dist_authinfo on this node: `role_sql` (an SQL expression naming a role)
    authenticates to every other node (nodeid 0) with `password`."""
    await conn.execute(
        f"""INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
            VALUES (0, {role_sql}, 'password=' || $1)
            ON CONFLICT (rolename, nodeid) DO UPDATE SET authinfo = EXCLUDED.authinfo""",
        password)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def chmod_base(base: Path) -> None:
    """The nodes may run as `nobody` (root): they must reach their directories."""
    os.chmod(base, 0o755)
