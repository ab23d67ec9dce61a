"""Helpers for driving the real `potato-runs` executable in the e2e tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXE = str(Path(sys.executable).parent / "potato-runs")
ENV = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", "POTATO_INVARIANT_CHECK_INTERVAL": "0"}
ENV["POTATO_TOTALS_RECONCILE_AT"] = ""   # no nightly reconciliation at a wall-clock-dependent time
ENV.pop("POTATO_DSN", None)
ADMIN_TOKEN = "e2e-admin-token-0123456789"
ENV["POTATO_ADMIN_TOKEN"] = ADMIN_TOKEN   # `serve --dsn` requires one; the CLI sends it


def start(data_dir: Path | None = None, *args: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Starts `serve --port 0` and returns it with its host:port, once it serves."""
    cmd = [EXE, "serve", "--port", "0", *args]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline()   # blocks until the server prints its address (or dies)
    assert "serving on" in line, (line, proc.stderr.read() if proc.stderr else "")
    return proc, line.split(" on ")[1].split()[0]


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def cli(*args: str, ok: bool = True, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([EXE, *args], capture_output=True, text=True, env=env or ENV,
                         timeout=timeout, check=False)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def assert_plain_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2 with one `error: ...` message on stderr (after any log lines), no traceback."""
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]) == 1, text
    assert "Traceback" not in text and "╭" not in text, text
    for needle in needles:
        assert needle in res.stderr, (needle, text)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> bool:
    """Polls `cond` until it holds or `timeout` seconds pass (a bounded loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "data" / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
