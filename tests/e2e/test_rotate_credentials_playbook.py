"""The `rotate-credentials` playbook of docs/playbooks.md, run line by line with bash
against a real `serve --auth-policy` process: afterwards the new token is accepted, the
old one is UNAUTHENTICATED, and the log never holds either."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from e2e.clitools import ENV, EXE, assert_plain_error, cli
from e2e.test_playbooks import playbook

OLD_TOKEN = "old-checkin-token-0123456789abcdef"


def reloads(log: Path) -> int:
    return log.read_text().count("access policy reloaded from")


def wait_for_reloads(log: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Polls the server's log until it has `count` reloads (SIGHUP is asynchronous)."""
    deadline = time.monotonic() + 30
    while reloads(log) < count:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_the_rotate_credentials_playbook_moves_a_client_to_a_new_token(
        pg_dsn: str, tmp_path: Path) -> None:
    policy, log, work = tmp_path / "policy.yaml", tmp_path / "serve.log", tmp_path / "work"
    work.mkdir()
    policy.write_text(
        "identities:\n"
        "  - name: reporting\n"
        f"    token_sha256: {hashlib.sha256(b'reporting-token-0123456789').hexdigest()}\n"
        "    roles: [runs.read]\n"
        "  - name: checkin-app\n"
        f"    token_sha256: {hashlib.sha256(OLD_TOKEN.encode()).hexdigest()}\n"
        "    roles: [runs.read, runs.write]\n")
    env = {**ENV, "POTATO_AUTH_POLICY": str(policy)}
    with log.open("w") as err:
        proc = subprocess.Popen([EXE, "serve", "--port", "0", "--dsn", pg_dsn], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving on" in line, (line, log.read_text())
        target = line.split(" on ")[1].split()[0]
        user = str(uuid.uuid4())
        old = {**env, "POTATO_TOKEN": OLD_TOKEN}
        cli("active", user, "--target", target, env=old)
        shell_env = {**env, "SERVE_PID": str(proc.pid), "POTATO_TARGET": target,
                     "USER_ID": user,
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
        hups = 0
        for command in playbook("rotate-credentials"):
            res = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=work,
                                 env=shell_env, capture_output=True, text=True, timeout=120,
                                 check=False)
            assert res.returncode == 0, (command, res.stdout, res.stderr, log.read_text())
            if command.startswith("kill -HUP"):
                hups += 1
                wait_for_reloads(log, hups, proc)
        new_token = (work / "new.token").read_text()
        assert len(new_token) == 64 and (work / "new.token").stat().st_mode & 0o077 == 0
        assert [ln.strip() for ln in policy.read_text().splitlines()
                if ln.strip().startswith("- name:")] == ["- name: reporting",
                                                         "- name: checkin-app-next"]
        refused = cli("active", user, "--target", target, env=old, ok=False)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        assert "POTATO_TOKEN" in refused.stderr   # the hint names the variable
        cli("mark", user, "--tz", "UTC", "--target", target,
            env={**env, "POTATO_TOKEN": new_token})
        cli("flags", "list", "--target", target, env=env)   # the admin token still works
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert reloads(log) == 2 and "anonymous" in text and "unknown bearer token" in text
    assert OLD_TOKEN not in text and new_token not in text


def test_serve_refuses_a_broken_policy_in_one_line(pg_dsn: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities:\n  - name: web\n    dns: web.test\n    roles: [runs.raed]\n")
    res = cli("serve", "--port", "0", "--dsn", pg_dsn, "--auth-policy", str(policy),
              ok=False)
    assert_plain_error(res, f"access policy {policy}: identities[0] ('web').roles[0]: "
                            f"unknown role 'runs.raed'")
