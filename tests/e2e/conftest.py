"""Fixtures of the e2e tests (the real `potato-runs` executable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from potato_runs.storage.embedded import find_pg_bindir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data directory (not created yet) under a traversable temporary base.
    Any cluster a test left running in it is stopped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="potato-e2e-"))
    os.chmod(base, 0o755)
    yield base / "pgdata"
    for pid_file in base.glob("*/data/postmaster.pid"):
        pgdata = pid_file.parent
        owner = pgdata.stat().st_uid
        cmd = [str(find_pg_bindir() / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"]
        kwargs: dict[str, object] = {"user": owner} if os.geteuid() == 0 else {}
        subprocess.run(cmd, capture_output=True, timeout=60, check=False, cwd="/",
                       **kwargs)  # type: ignore[call-overload]
    shutil.rmtree(base, ignore_errors=True)
