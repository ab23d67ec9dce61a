"""TLS and mTLS on a real server: who is answered, who is refused, and certificate
reloads (grpc dynamic credentials on a grpc.aio server) that keep open connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tls_support import SPIFFE_CHECKIN, Issued, Pki, make_pki

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.app import App, Database, StartupError, build_app
from potato_runs.config import Settings
from potato_runs.storage.pool import create_pool
from potato_runs.transport.tls import TlsError, exposure_warnings, server_tls
from support import ADMIN_TOKEN, app_dsn


def _settings(pg_dsn: str, **tls: Any) -> Settings:
    return Settings(host="127.0.0.1", port=0, dsn=pg_dsn, grace_period=0.5,
                    invariant_check_interval=0, health_probe_interval=0,
                    admin_token=ADMIN_TOKEN, totals_reconcile_at=None, **tls)


@contextlib.asynccontextmanager
async def serving(pg_dsn: str, **tls: Any) -> AsyncIterator[App]:
    dsn = app_dsn(pg_dsn)   # least privilege: serves as potato_app
    pool = await create_pool(dsn, min_size=1, max_size=4)
    app = await build_app(_settings(dsn, **tls), database=Database(dsn=dsn, pool=pool))
    try:
        yield app
    finally:
        await app.stop(0)
        await pool.close()


def tls_channel(port: int, ca: Path | None, client: Issued | None = None,
                host: str = "localhost") -> grpc.aio.Channel:
    key, chain = client.pem() if client is not None else (None, None)
    creds = grpc.ssl_channel_credentials(ca.read_bytes() if ca else None, key, chain)
    return grpc.aio.secure_channel(f"{host}:{port}", creds)


async def active(channel: grpc.aio.Channel) -> pb.GetActiveRunResponse:
    stub = runs_service_pb2_grpc.RunsServiceStub(channel)
    return await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=str(uuid.uuid4())),
                                   timeout=10)


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The code of a call that must fail to connect."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await active(channel)
    return info.value.code()


def served_certificate(port: int, ca: Path, client: Issued | None = None) -> str:
    """SHA-256 fingerprint of the certificate a new TLS connection is served."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "ca")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "other", name="other")


def install(issued: Issued, dest: Path) -> tuple[Path, Path]:
    """Copies a certificate and key to the files the server is configured with."""
    dest.mkdir(exist_ok=True)
    shutil.copyfile(issued.cert, dest / "tls.crt")
    shutil.copyfile(issued.key, dest / "tls.key")
    return dest / "tls.crt", dest / "tls.key"


async def test_a_tls_server_answers_tls_clients_and_refuses_plaintext(
        pg_dsn: str, pki: Pki, other_pki: Pki) -> None:
    async with serving(pg_dsn, tls_cert=pki.server.cert, tls_key=pki.server.key) as app:
        for host in ("localhost", "127.0.0.1"):   # both SANs
            async with tls_channel(app.port, pki.ca_cert, host=host) as ch:
                assert (await active(ch)).HasField("run") is False
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(app.port, other_pki.ca_cert) as ch:   # untrusted server
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        # Without a client CA no client certificate is asked for, but one is harmless.
        async with tls_channel(app.port, pki.ca_cert, pki.issue_client("any")) as ch:
            await active(ch)


async def test_mtls_accepts_only_client_certificates_signed_by_the_client_ca(
        pg_dsn: str, pki: Pki, other_pki: Pki) -> None:
    checkin = pki.issue_client("checkin", uri=SPIFFE_CHECKIN, dns="checkin.potato.test")
    stranger = other_pki.issue_client("stranger", uri=SPIFFE_CHECKIN)
    async with serving(pg_dsn, tls_cert=pki.server.cert, tls_key=pki.server.key,
                       tls_client_ca=pki.ca_cert) as app:
        async with tls_channel(app.port, pki.ca_cert, checkin) as ch:
            await active(ch)
        async with tls_channel(app.port, pki.ca_cert) as ch:   # no client certificate
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(app.port, pki.ca_cert, stranger) as ch:   # another CA
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_reload_serves_the_new_certificate_and_keeps_open_connections(
        pg_dsn: str, pki: Pki, other_pki: Pki, tmp_path: Path) -> None:
    cert, key = install(pki.server, tmp_path / "live")
    async with serving(pg_dsn, tls_cert=cert, tls_key=key) as app:
        old = tls_channel(app.port, pki.ca_cert)   # trusts only the old CA
        await active(old)
        assert await asyncio.to_thread(served_certificate, app.port,
                                       pki.ca_cert) == pki.server.fingerprint

        install(other_pki.server, tmp_path / "live")   # the rotation: new files, same paths
        assert app.tls is not None and app.tls.reload()

        # The open connection keeps its session: a reconnect could not succeed, since
        # this channel does not trust the new certificate.
        for _ in range(3):
            await active(old)
        assert await asyncio.to_thread(served_certificate, app.port,
                                       other_pki.ca_cert) == other_pki.server.fingerprint
        async with tls_channel(app.port, other_pki.ca_cert) as ch:
            await active(ch)
        async with tls_channel(app.port, pki.ca_cert) as ch:   # new connection, old CA
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        await old.close()


async def test_reload_also_swaps_the_client_ca(pg_dsn: str, pki: Pki, other_pki: Pki,
                                              tmp_path: Path) -> None:
    ca = tmp_path / "client-ca.crt"
    shutil.copyfile(pki.ca_cert, ca)
    before = pki.issue_client("before", uri=SPIFFE_CHECKIN)
    after = other_pki.issue_client("after", uri=SPIFFE_CHECKIN)
    async with serving(pg_dsn, tls_cert=pki.server.cert, tls_key=pki.server.key,
                       tls_client_ca=ca) as app:
        async with tls_channel(app.port, pki.ca_cert, before) as ch:
            await active(ch)
        shutil.copyfile(other_pki.ca_cert, ca)
        assert app.tls is not None and app.tls.reload()
        async with tls_channel(app.port, pki.ca_cert, after) as ch:
            await active(ch)
        async with tls_channel(app.port, pki.ca_cert, before) as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("breakage", ["junk", "missing", "mismatched key"])
async def test_a_reload_with_a_broken_file_keeps_the_certificate_and_logs_one_error(
        pg_dsn: str, pki: Pki, other_pki: Pki, tmp_path: Path, breakage: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cert, key = install(pki.server, tmp_path / "live")
    async with serving(pg_dsn, tls_cert=cert, tls_key=key) as app:
        if breakage == "junk":
            cert.write_text("not a certificate\n")
        elif breakage == "missing":
            key.unlink()
        else:
            shutil.copyfile(other_pki.server.key, key)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="potato_runs.transport.tls"):
            assert app.tls is not None and not app.tls.reload()
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and errors[0].levelno == logging.ERROR, caplog.text
        assert "\n" not in errors[0].getMessage()
        assert pki.server.fingerprint in errors[0].getMessage()
        async with tls_channel(app.port, pki.ca_cert) as ch:   # still the old certificate
            await active(ch)


def _startup_error(tmp_path: Path, pki: Pki, case: str) -> dict[str, Any]:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    other_key = pki.issue_client("x").key
    cases: dict[str, dict[str, Any]] = {
        "cert without key": {"tls_cert": pki.server.cert},
        "key without cert": {"tls_key": pki.server.key},
        "client CA without TLS": {"tls_client_ca": pki.ca_cert},
        "missing cert": {"tls_cert": tmp_path / "nope.crt", "tls_key": pki.server.key},
        "key is a certificate": {"tls_cert": pki.server.cert, "tls_key": pki.server.cert},
        "invalid PEM": {"tls_cert": junk, "tls_key": pki.server.key},
        "mismatched key": {"tls_cert": pki.server.cert, "tls_key": other_key},
        "client CA is a key": {"tls_cert": pki.server.cert, "tls_key": pki.server.key,
                               "tls_client_ca": pki.server.key},
    }
    return cases[case]


STARTUP_CASES = ["cert without key", "key without cert", "client CA without TLS",
                 "missing cert", "key is a certificate", "invalid PEM", "mismatched key",
                 "client CA is a key"]


@pytest.mark.parametrize("case", STARTUP_CASES)
def test_unusable_tls_settings_are_one_line_errors(tmp_path: Path, pki: Pki,
                                                   case: str) -> None:
    settings = Settings(**_startup_error(tmp_path, pki, case))
    with pytest.raises(TlsError) as info:
        server_tls(settings)
    message = str(info.value)
    assert message and "\n" not in message, message
    assert "PEM lib" not in message   # OpenSSL's own words say nothing useful


async def test_build_app_refuses_unusable_tls_before_binding(pg_dsn: str, pki: Pki,
                                                            tmp_path: Path) -> None:
    settings = _settings(pg_dsn, tls_cert=pki.server.cert, tls_key=tmp_path / "no.key")
    with pytest.raises(StartupError, match="cannot read the TLS key"):
        await build_app(settings)


@pytest.mark.parametrize(("host", "tls", "policy", "expected"), [
    ("127.0.0.1", False, False, []),
    ("localhost", False, False, []),
    ("::1", False, False, []),
    ("0.0.0.0", False, False, ["without TLS", "without an access policy"]),
    ("0.0.0.0", True, False, ["without an access policy"]),
    ("0.0.0.0", True, True, []),
])
def test_serve_warns_beyond_loopback_without_tls_or_policy(
        tmp_path: Path, host: str, tls: bool, policy: bool, expected: list[str]) -> None:
    extra: dict[str, Path] = {}
    if tls:
        extra |= {"tls_cert": tmp_path / "c", "tls_key": tmp_path / "k"}
    if policy:
        extra["auth_policy"] = tmp_path / "policy.yaml"
    warnings = exposure_warnings(Settings(host=host, **extra))
    assert len(warnings) == len(expected)
    for warning, needle in zip(warnings, expected, strict=True):
        assert needle in warning and host in warning
