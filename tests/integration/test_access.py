"""Per-method authorization through a real server on port 0: without a policy nothing
changes; with one, tokens and client certificates map to roles, unknown callers are
UNAUTHENTICATED, callers without the role PERMISSION_DENIED, health and reflection stay
open, decisions are logged without tokens, and SIGHUP's reload swaps the policy."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tls_support import SPIFFE_CHECKIN, make_pki

from potato.runs.v1 import runs_service_pb2 as v1_pb
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import admin_service_pb2 as admin_pb
from potato.runs.v2 import admin_service_pb2_grpc as admin_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as runs_grpc
from potato.runs.v2 import totals_service_pb2 as totals_pb
from potato.runs.v2 import totals_service_pb2_grpc as totals_grpc
from potato_runs.app import StartupError, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from support import ADMIN_TOKEN, BearerInterceptor, ServerThread, rich_status

READER_TOKEN = "reader-token-do-not-log-4f2a9c"
WRITER_TOKEN = "writer-token-do-not-log-8d1e7b"
OPS_TOKEN = "ops-token-do-not-log-61b0c3"
ACCESS_LOGGER = "potato_runs.access"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def policy_text(reader_roles: str = "[runs.read]") -> str:
    return f"""
# test policy
identities:
  - name: reporting
    token_sha256: {sha(READER_TOKEN)}
    roles: {reader_roles}
  - name: checkin-app
    token_sha256: {sha(WRITER_TOKEN)}
    roles: [runs.read, runs.write]
  - name: ops
    token_sha256: {sha(OPS_TOKEN)}
    roles: [admin]
  - name: checkin-workload
    uri: {SPIFFE_CHECKIN}
    roles: [runs.read, runs.write]
  - name: reports-host
    dns: reports.potato.test
    roles: [runs.read]
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(policy_text())
    return path


@pytest.fixture(scope="module")
def guarded(pg_dsn: str, test_clock: FixedClock, policy_file: Path) -> Iterator[ServerThread]:
    """A server with the access policy (plaintext: bearer tokens only)."""
    srv = ServerThread(pg_dsn, test_clock, auth_policy=policy_file).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def channels(guarded: ServerThread) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """One channel per caller: none (no credentials), a token each."""
    tokens = {"reader": READER_TOKEN, "writer": WRITER_TOKEN, "ops": OPS_TOKEN,
              "admin": ADMIN_TOKEN, "stranger": "stranger-token-do-not-log-000"}
    chans = {"none": grpc.aio.insecure_channel(guarded.target)}
    chans.update({name: grpc.aio.insecure_channel(
        guarded.target, interceptors=[BearerInterceptor(token)])
        for name, token in tokens.items()})
    try:
        yield chans
    finally:
        for ch in chans.values():
            await ch.close()


def mark(user: str) -> pb.MarkDayRequest:
    return pb.MarkDayRequest(user_id=user, local_date="2026-11-20", time_zone="UTC")


async def expect(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == reason and info.domain == "runs.potato.app"


# ------------------------------------------------------------------ no policy
async def test_without_a_policy_nothing_changes(server: ServerThread) -> None:
    """RunsService (v1, v2) and TotalsService answer anyone; AdminService needs the admin
    token (UNAUTHENTICATED with ErrorInfo otherwise)."""
    user = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(server.target) as ch:
        runs = runs_grpc.RunsServiceStub(ch)
        await runs.MarkDay(mark(user), timeout=10)
        await runs.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=10)
        await v1_grpc.RunsServiceStub(ch).GetCurrentRun(
            v1_pb.GetCurrentRunRequest(user_id=user), timeout=10)
        await totals_grpc.TotalsServiceStub(ch).GetTotals(
            totals_pb.GetTotalsRequest(user_id=user), timeout=10)
        await expect(admin_grpc.AdminServiceStub(ch).ListFlags(admin_pb.ListFlagsRequest()),
                     grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    async with grpc.aio.insecure_channel(
            server.target, interceptors=[BearerInterceptor("not-the-admin-token-xx")]) as ch:
        await expect(admin_grpc.AdminServiceStub(ch).ListFlags(admin_pb.ListFlagsRequest()),
                     grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    async with grpc.aio.insecure_channel(server.target,
                                         interceptors=[BearerInterceptor()]) as ch:
        await admin_grpc.AdminServiceStub(ch).ListFlags(admin_pb.ListFlagsRequest(), timeout=10)


def test_without_a_policy_open_methods_are_not_wrapped(server: ServerThread) -> None:
    """They pay nothing: the handler registered is the servicer's own method."""
    assert server.app is not None and server.app.access is not None
    access = server.app.access

    async def behavior(request: object, context: object) -> object:
        return request

    assert access.intercept("/potato.runs.v2.RunsService/MarkDay", behavior) is behavior
    assert access.intercept("/potato.runs.v2.TotalsService/GetTotals", behavior) is behavior
    assert access.intercept("/potato.runs.v2.AdminService/ListFlags", behavior) \
        is not behavior
    with pytest.raises(ValueError, match="has no role"):
        access.intercept("/potato.runs.v2.RunsService/NewMethod", behavior)


# ------------------------------------------------------------------ with a policy
async def test_reader_reads_but_may_not_write(channels: dict[str, grpc.aio.Channel],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    user = str(uuid.uuid4())
    await runs_grpc.RunsServiceStub(channels["writer"]).MarkDay(mark(user), timeout=10)
    reader = runs_grpc.RunsServiceStub(channels["reader"])
    res = await reader.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=10)
    assert res.HasField("run")
    await totals_grpc.TotalsServiceStub(channels["reader"]).GetTotals(
        totals_pb.GetTotalsRequest(user_id=user), timeout=10)
    await v1_grpc.RunsServiceStub(channels["reader"]).GetCurrentRun(
        v1_pb.GetCurrentRunRequest(user_id=user), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reader.MarkDay(mark(user), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "PERMISSION_DENIED"
    assert dict(info.metadata) == {"method": "/potato.runs.v2.RunsService/MarkDay",
                                   "role": "runs.write"}
    await expect(v1_grpc.RunsServiceStub(channels["reader"]).MarkDay(
        v1_pb.MarkDayRequest(user_id=user, date="2026-11-19", time_zone="UTC")),
        grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")

    denials = [r for r in caplog.records
               if r.name == ACCESS_LOGGER and r.levelno >= logging.INFO]
    assert denials, "a denial is logged"
    text = [r.getMessage() for r in denials]
    assert any("reporting" in t and "/potato.runs.v2.RunsService/MarkDay" in t
               and "runs.write" in t and "127.0.0.1" in t for t in text), text
    allows = [r.getMessage() for r in caplog.records
              if r.name == ACCESS_LOGGER and r.levelno == logging.DEBUG]
    assert any("allow reporting to /potato.runs.v2.RunsService/GetActiveRun" in t
               for t in allows), allows
    for record in caplog.records:
        assert READER_TOKEN not in record.getMessage()
        assert sha(READER_TOKEN) not in record.getMessage()


async def test_unknown_and_missing_credentials_are_unauthenticated(
        channels: dict[str, grpc.aio.Channel], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    user = str(uuid.uuid4())
    for name in ("stranger", "none"):
        runs = runs_grpc.RunsServiceStub(channels[name])
        await expect(runs.GetActiveRun(pb.GetActiveRunRequest(user_id=user)),
                     grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        await expect(runs.MarkDay(mark(user)), grpc.StatusCode.UNAUTHENTICATED,
                     "UNAUTHENTICATED")
        await expect(admin_grpc.AdminServiceStub(channels[name]).ListFlags(
            admin_pb.ListFlagsRequest()), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    messages = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert any("anonymous" in m and "an unknown bearer token" in m for m in messages)
    assert any("anonymous" in m and "no credentials" in m for m in messages)
    assert not any("stranger-token" in m for m in messages)


async def test_health_and_reflection_stay_open(channels: dict[str, grpc.aio.Channel]) -> None:
    ch = channels["none"]
    res = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="potato.runs.v2.RunsService"), timeout=10)
    assert res.status == health_pb2.HealthCheckResponse.SERVING

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for answer in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            requests(), timeout=10):
        names = [s.name for s in answer.list_services_response.service]
    assert "potato.runs.v2.AdminService" in names


async def test_admin_role_calls_the_admin_service(
        channels: dict[str, grpc.aio.Channel]) -> None:
    """The policy's `ops` identity and the server's admin token have `admin`; a caller
    with only runs roles is denied, and `ops` cannot touch runs."""
    for name in ("ops", "admin"):
        await admin_grpc.AdminServiceStub(channels[name]).ListFlags(
            admin_pb.ListFlagsRequest(), timeout=10)
    await expect(admin_grpc.AdminServiceStub(channels["writer"]).ListFlags(
        admin_pb.ListFlagsRequest()), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    await expect(runs_grpc.RunsServiceStub(channels["ops"]).GetActiveRun(
        pb.GetActiveRunRequest(user_id=str(uuid.uuid4()))),
        grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    await expect(runs_grpc.RunsServiceStub(channels["admin"]).GetActiveRun(
        pb.GetActiveRunRequest(user_id=str(uuid.uuid4()))),
        grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_reload_swaps_the_policy_and_keeps_it_when_broken(
        guarded: ServerThread, policy_file: Path, channels: dict[str, grpc.aio.Channel],
        caplog: pytest.LogCaptureFixture) -> None:
    assert guarded.app is not None
    app = guarded.app
    reader = runs_grpc.RunsServiceStub(channels["reader"])
    user = str(uuid.uuid4())

    async def reload() -> None:   # what SIGHUP does, on the server's loop
        app.reload()

    try:
        write(policy_file, policy_text("[runs.read, runs.write]"))
        guarded.run(reload())
        await reader.MarkDay(mark(user), timeout=10)

        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        write(policy_file, policy_text("[runs.read, runs.delete]"))
        guarded.run(reload())
        errors = [r for r in caplog.records
                  if r.name == ACCESS_LOGGER and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "unknown role 'runs.delete'" in errors[0].getMessage()
        assert "keeping the policy in force" in errors[0].getMessage()
        await reader.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date="2026-11-20"),
                               timeout=10)
    finally:
        write(policy_file, policy_text())
        guarded.run(reload())
    await expect(reader.MarkDay(mark(user)), grpc.StatusCode.PERMISSION_DENIED,
                 "PERMISSION_DENIED")


@pytest.mark.parametrize(("text", "problem"), [
    ("identities: [{name: a, dns: a.test, roles: [root]}]", "unknown role 'root'"),
    ("identities: [{name: a, dns: a.test}, {name: b, dns: a.test}]",
     "identities 'a' and 'b' have the same dns 'a.test'"),
    ("identites: []", "identites: unknown key"),
    (f"identities: [{{name: a, token_sha256: {sha(ADMIN_TOKEN)}}}]",
     "hash of the server's admin token"),
])
async def test_a_bad_policy_stops_startup(tmp_path: Path, pg_dsn: str, text: str,
                                          problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(StartupError) as err:
        await build_app(Settings(port=0, dsn=pg_dsn, admin_token=ADMIN_TOKEN,
                                 auth_policy=path))
    assert str(err.value).startswith(f"access policy {path}: ")
    assert problem in str(err.value) and "\n" not in str(err.value)


async def test_a_missing_policy_file_stops_startup(tmp_path: Path, pg_dsn: str) -> None:
    with pytest.raises(StartupError, match="cannot read it"):
        await build_app(Settings(port=0, dsn=pg_dsn, admin_token=ADMIN_TOKEN,
                                 auth_policy=tmp_path / "absent.yaml"))


# ------------------------------------------------------------------ mTLS identities
async def test_client_certificate_names_map_to_roles(
        tmp_path: Path, pg_dsn: str, test_clock: FixedClock, policy_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Under mTLS, a certificate's SAN URI (a SPIFFE id) or SAN DNS name is the caller;
    a certificate of the same CA with names the policy does not list is nobody."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    pki = make_pki(tmp_path / "pki")
    checkin = pki.issue_client("checkin", uri=SPIFFE_CHECKIN)
    reports = pki.issue_client("reports", dns="Reports.Potato.Test")
    other = pki.issue_client("other", uri="spiffe://potato.test/ns/prod/sa/other",
                             dns="other.potato.test")
    srv = ServerThread(pg_dsn, test_clock, auth_policy=policy_file,
                       tls_cert=pki.server.cert, tls_key=pki.server.key,
                       tls_client_ca=pki.ca_cert).start()
    target = f"localhost:{srv.port}"

    def creds(who: object, token: str | None = None) -> grpc.ChannelCredentials:
        key, chain = who.pem()  # type: ignore[attr-defined]
        tls = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, chain)
        if token is None:
            return tls
        return grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token))

    user = str(uuid.uuid4())
    try:
        async with grpc.aio.secure_channel(target, creds(checkin)) as ch:
            await runs_grpc.RunsServiceStub(ch).MarkDay(mark(user), timeout=10)
            await expect(admin_grpc.AdminServiceStub(ch).ListFlags(admin_pb.ListFlagsRequest()),
                         grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        async with grpc.aio.secure_channel(target, creds(reports)) as ch:
            runs = runs_grpc.RunsServiceStub(ch)
            res = await runs.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=10)
            assert res.HasField("run")
            await expect(runs.MarkDay(mark(user)), grpc.StatusCode.PERMISSION_DENIED,
                         "PERMISSION_DENIED")
        async with grpc.aio.secure_channel(target, creds(other)) as ch:
            await expect(runs_grpc.RunsServiceStub(ch).GetActiveRun(
                pb.GetActiveRunRequest(user_id=user)),
                grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        # An unknown (e.g. stale) token leaves the certificate's identity.
        async with grpc.aio.secure_channel(
                target, creds(checkin, "stale-token-do-not-log-9999")) as ch:
            await runs_grpc.RunsServiceStub(ch).MarkDay(mark(user), timeout=10)
        # A known bearer token decides over the certificate: the ops token can
        # administer, not write, even on the checkin workload's connection.
        async with grpc.aio.secure_channel(target, creds(checkin, OPS_TOKEN)) as ch:
            await admin_grpc.AdminServiceStub(ch).ListFlags(admin_pb.ListFlagsRequest(),
                                                            timeout=10)
            await expect(runs_grpc.RunsServiceStub(ch).MarkDay(mark(user)),
                         grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    finally:
        srv.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert any("reports-host (by dns) lacks runs.write" in m for m in messages), messages
    assert any("spiffe://potato.test/ns/prod/sa/other" in m and "anonymous" in m
               for m in messages), messages
    assert not any(OPS_TOKEN in m for m in messages)
