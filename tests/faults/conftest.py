"""Fixtures of the fault suite: a database of its own per scenario, so the final
checks (the whole-database checker, projection == rebuild) see only that scenario."""

from __future__ import annotations

import uuid

import pytest

from support import fresh_database


@pytest.fixture
def fault_dsn(pg_dsn: str, request: pytest.FixtureRequest) -> str:
    name = f"faults_{request.node.name.removeprefix('test_')[:30]}_{uuid.uuid4().hex[:8]}"
    return fresh_database(pg_dsn, name.lower())
