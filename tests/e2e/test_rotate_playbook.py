"""The `rotate-certificates` playbook of docs/playbooks.md, run line by line with bash
against a real `serve` process: afterwards new connections get the new certificate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tls_support import make_pki

from e2e.clitools import ENV, cli, start
from e2e.test_playbooks import playbook


def test_the_rotate_certificates_playbook_serves_the_new_certificate(
        pg_dsn: str, tmp_path: Path) -> None:
    old, new = make_pki(tmp_path / "old", name="old"), make_pki(tmp_path / "new", name="new")
    live, work = tmp_path / "live", tmp_path / "work"
    live.mkdir()
    work.mkdir()
    shutil.copyfile(old.server.cert, live / "tls.crt")
    shutil.copyfile(old.server.key, live / "tls.key")
    shutil.copyfile(new.server.cert, work / "new.crt")
    shutil.copyfile(new.server.key, work / "new.key")
    shutil.copyfile(new.ca_cert, work / "new-ca.crt")
    env = {**ENV, "POTATO_TLS_CERT": str(live / "tls.crt"),
           "POTATO_TLS_KEY": str(live / "tls.key")}
    proc, target = start(None, "--dsn", pg_dsn, env=env)
    try:
        cli("health", "--target", target, "--tls-ca", str(old.ca_cert))
        shell_env = {**env, "SERVE_PID": str(proc.pid), "POTATO_TARGET": target,
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
        for line in playbook("rotate-certificates"):
            res = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=work,
                                 env=shell_env, capture_output=True, text=True, timeout=120,
                                 check=False)
            assert res.returncode == 0, (line, res.stdout, res.stderr)
        # A new connection that trusts only the old CA is refused now.
        assert cli("health", "--target", target, "--tls-ca", str(old.ca_cert),
                   ok=False).returncode == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=60)
    assert proc.returncode == 0, log
    assert f"TLS certificates reloaded from {live / 'tls.crt'}" in log, log
    assert f"sha256={new.server.fingerprint}" in log, log
