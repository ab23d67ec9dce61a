"""v1 is frozen: `buf breaking` against the committed image of its first release
catches an incompatible change (the same command scripts/test.sh runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "protos" / "images" / "potato_runs_v1.binpb"
V1 = Path("protos") / "potato" / "runs" / "v1" / "runs_service.proto"


def _buf() -> str:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    found = shutil.which("buf") or (str(local) if local.exists() else None)
    if found is None:
        pytest.fail("buf is not installed: run scripts/bootstrap.sh --dev")
    return found


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    shutil.copytree(ROOT / "protos", work / "protos")
    return work


def _breaking(work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_buf(), "breaking", "--against", str(IMAGE)], cwd=work,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "BUF_CACHE_DIR": str(work / ".cache")})


def test_the_current_v1_matches_its_first_release(tmp_path: Path) -> None:
    res = _breaking(_workspace(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("before", "after", "needle"), [
    # a field renumbered
    ("  string date = 2;\n  // Optional IANA zone", "  string date = 5;\n  // Optional IANA zone",
     "MarkDayRequest"),
    # a field's type changed
    ("  int32 day_count = 3;", "  int64 day_count = 3;", "day_count"),
    # a method removed
    ("  rpc GetStats(GetStatsRequest) returns (GetStatsResponse);\n", "", "GetStats"),
])
def test_buf_breaking_catches_an_incompatible_v1_change(tmp_path: Path, before: str, after: str,
                                                        needle: str) -> None:
    work = _workspace(tmp_path)
    proto = work / V1
    text = proto.read_text()
    assert before in text
    proto.write_text(text.replace(before, after, 1))
    res = _breaking(work)
    assert res.returncode != 0, "buf breaking accepted an incompatible v1 change"
    assert needle in res.stdout + res.stderr


def test_v2_never_imports_v1() -> None:
    for proto in (ROOT / "protos" / "potato" / "runs" / "v2").glob("*.proto"):
        assert "potato/runs/v1" not in proto.read_text(), proto.name
