"""TLS through the real executables: `serve --tls-cert/--tls-key/--client-ca`, SIGHUP
rotation, the client flags of the CLI, and the warning beyond loopback."""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from tls_support import SPIFFE_CHECKIN, Issued, make_pki

from e2e.clitools import ENV, assert_plain_error, cli, start, wait_until


def install(issued: Issued, live: Path) -> list[str]:
    """Copies a certificate and key where the server reads them; the serve flags."""
    live.mkdir(exist_ok=True)
    shutil.copyfile(issued.cert, live / "tls.crt")
    shutil.copyfile(issued.key, live / "tls.key")
    return ["--tls-cert", str(live / "tls.crt"), "--tls-key", str(live / "tls.key")]


def finish(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the server's stderr (its log)."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def test_cli_talks_tls_and_follows_a_sighup_rotation(pg_dsn: str, tmp_path: Path) -> None:
    pki, new = make_pki(tmp_path / "ca"), make_pki(tmp_path / "new", name="new")
    user = str(uuid.uuid4())
    proc, target = start(None, "--dsn", pg_dsn, *install(pki.server, tmp_path / "live"))
    try:
        cli("mark", user, "2025-06-15", "--tz", "UTC", "--target", target,
            "--tls-ca", str(pki.ca_cert))
        assert "1 day" in cli("active", user, "--target", target, "--tls-ca",
                              str(pki.ca_cert)).stdout
        cli("active", user, "--target", target, env={**ENV, "POTATO_TLS_CA": str(pki.ca_cert)})
        cli("flags", "list", "--target", target, "--tls-ca", str(pki.ca_cert))   # admin too

        plain = cli("active", user, "--target", target, ok=False)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
        assert "--tls-ca" in plain.stderr   # the hint
        missing = cli("active", user, "--target", target, "--tls-ca",
                      str(tmp_path / "nope.pem"), ok=False)
        assert_plain_error(missing, "cannot read --tls-ca", "hint:")
        not_a_ca = cli("active", user, "--target", target, "--tls-ca",
                       str(pki.server.key), ok=False)
        assert_plain_error(not_a_ca, "is not a PEM CA certificate")
        wrong = cli("active", user, "--target", target, "--tls-ca", str(new.ca_cert), ok=False)
        assert wrong.returncode == 1 and "TLS handshake" in wrong.stderr, wrong.stderr

        # Rotation: new files at the same paths, SIGHUP, new connections get them.
        install(new.server, tmp_path / "live")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: cli("active", user, "--target", target, "--tls-ca",
                                      str(new.ca_cert), ok=False).returncode == 0)
        assert cli("active", user, "--target", target, "--tls-ca", str(pki.ca_cert),
                   ok=False).returncode == 1
    finally:
        log = finish(proc)
    assert f"sha256={new.server.fingerprint}" in log, log


def test_cli_presents_a_client_certificate_to_an_mtls_server(pg_dsn: str,
                                                             tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca")
    client = pki.issue_client("operator", uri=SPIFFE_CHECKIN)
    user = str(uuid.uuid4())
    proc, target = start(None, "--dsn", pg_dsn, *install(pki.server, tmp_path / "live"),
                         "--client-ca", str(pki.ca_cert))
    ca = ["--target", target, "--tls-ca", str(pki.ca_cert)]
    try:
        cli("active", user, *ca, "--tls-cert", str(client.cert), "--tls-key", str(client.key))
        cli("check", "--user", user, *ca, env={**ENV, "POTATO_TLS_CLIENT_CERT": str(client.cert),
                                                "POTATO_TLS_CLIENT_KEY": str(client.key)})
        # The name verified in the server's certificate can differ from the --target host.
        mine = ["--tls-cert", str(client.cert), "--tls-key", str(client.key)]
        cli("active", user, *ca, *mine, "--tls-server-name", "localhost")
        other = cli("active", user, *ca, *mine, "--tls-server-name", "db.example", ok=False)
        assert other.returncode == 1 and "TLS handshake" in other.stderr, other.stderr
        anonymous = cli("active", user, *ca, ok=False)
        assert anonymous.returncode == 1 and "--tls-cert" in anonymous.stderr
        half = cli("active", user, *ca, "--tls-cert", str(client.cert), ok=False)
        assert_plain_error(half, "--tls-cert and --tls-key go together")
    finally:
        finish(proc)


def test_serve_warns_beyond_loopback_without_tls_or_policy(pg_dsn: str) -> None:
    proc, _ = start(None, "--dsn", pg_dsn, "--host", "0.0.0.0")
    log = finish(proc)
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln]   # text or JSON logs
    assert any("listening on 0.0.0.0 without TLS" in ln and "--tls-cert" in ln
               for ln in warnings), log
    assert any("listening on 0.0.0.0 without an access policy" in ln and "POTATO_AUTH_POLICY"
               in ln for ln in warnings), log


def test_serve_refuses_unusable_tls_files_with_one_line(pg_dsn: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca")
    res = cli("serve", "--port", "0", "--dsn", pg_dsn, "--tls-cert", str(pki.server.cert),
              ok=False)
    assert_plain_error(res, "--tls-key")
    res = cli("serve", "--port", "0", "--dsn", pg_dsn, "--tls-cert", str(pki.server.cert),
              "--tls-key", str(pki.ca_key), ok=False)
    assert_plain_error(res, "does not match the certificate")
