"""The docs' ```sql citus blocks run on the Citus tier's coordinator, each in a
transaction that is rolled back (the `sql postgres` blocks: tests/docs/test_docs_sql.py)."""

from __future__ import annotations

import asyncpg
import pytest
from docs.test_docs_sql import Block, sql_blocks

from citus.conftest import Cluster

pytestmark = pytest.mark.citus_smoke


def test_the_docs_hold_citus_sql() -> None:
    assert sql_blocks("citus"), "no ```sql citus block in docs/"


@pytest.mark.parametrize("block", sql_blocks("citus"), ids=lambda b: b.where)
async def test_citus_block_runs(citus_cluster: Cluster, block: Block) -> None:
    assert not block.expect_error[0], f"{block.where}: expect-error is for postgres/sqlite blocks"
    conn = await asyncpg.connect(citus_cluster.dsn)
    tx = conn.transaction()
    await tx.start()
    try:
        try:
            await conn.execute(block.body)
        except asyncpg.PostgresError as exc:
            pytest.fail(f"{block.where}: citus block failed: {exc.sqlstate} {exc}")
    finally:
        await tx.rollback()
        await conn.close()
