"""The composition root: wires pool, repositories, services and servicers."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from potato.runs.v1 import runs_service_pb2 as v1_runs_service_pb2
from potato.runs.v2 import admin_service_pb2, runs_service_pb2, totals_service_pb2
from potato_runs.clock import Clock, SystemClock
from potato_runs.config import Settings
from potato_runs.deadline import Deadline
from potato_runs.domain.flags import TOTALS_V2
from potato_runs.domain.totals_answers import TotalsSource
from potato_runs.domain.totals_answers import normalize as normalize_totals
from potato_runs.observability import Providers, build_providers
from potato_runs.service.admin_service import AdminService
from potato_runs.service.database_probe import DatabaseProbe
from potato_runs.service.flags import FlagService, FlagStore
from potato_runs.service.invariant_monitor import InvariantMonitor
from potato_runs.service.runs_service import RunsService
from potato_runs.service.shadow import ShadowComparer, ShadowPaths, ShadowSettings
from potato_runs.service.telemetry import Telemetry
from potato_runs.service.totals_reconcile import DailyTotalsReconcile, TotalsReconciler
from potato_runs.service.totals_service import TotalsService
from potato_runs.service.v1_runs import V1RunsService
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError
from potato_runs.storage.flags_repo import FlagsRepository
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool
from potato_runs.storage.read_paths import ReadPaths
from potato_runs.storage.runs_repo import RunsRepository
from potato_runs.storage.shadow_repo import ShadowRepository
from potato_runs.storage.totals_reads import TotalsReads
from potato_runs.storage.totals_repo import TotalsRepository
from potato_runs.transport.admin_servicer import AdminServicer
from potato_runs.transport.auth import AdminAuth
from potato_runs.transport.registration import HandlerInterceptor, add_service
from potato_runs.transport.runs_servicer import RunsServicer
from potato_runs.transport.totals_servicer import TotalsServicer
from potato_runs.transport.v1_servicer import V1RunsServicer

log = logging.getLogger(__name__)

RUNS_SERVICE = runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"].full_name
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
V1_RUNS_SERVICE = v1_runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"].full_name
TOTALS_SERVICE = totals_service_pb2.DESCRIPTOR.services_by_name["TotalsService"].full_name
ADMIN_POOL_SIZE = 2
INVARIANTS_HEALTH = "potato.runs.v2.Invariants"
"""Health service name that turns NOT_SERVING while the invariant checker finds violations."""


class StartupError(RuntimeError):
    """The server could not start (e.g. it could not bind its address)."""


@dataclass
class Database:
    dsn: str
    pool: asyncpg.Pool
    embedded: EmbeddedPostgres | None = None

    async def close(self) -> None:
        try:
            await self.pool.close()
        finally:
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)


async def open_database(settings: Settings, *, run_migrations: bool = True,
                        create_cluster: bool = True) -> Database:
    """Connects to settings.dsn, or starts the embedded cluster (initialising it
    unless create_cluster=False); migrates unless run_migrations=False.

    Migrations run on a connection of their own, without the pool's command_timeout
    (migrate() bounds its statements) and closed afterwards, so no session lock can
    outlive them. If anything fails after the embedded cluster started, it is stopped
    (and its data directory released) before the error propagates."""
    embedded = None
    dsn = settings.dsn
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.to_thread(embedded.start, create=create_cluster)
    try:
        if embedded is not None and create_cluster:
            await ensure_database(embedded.dsn("postgres"), "potato")
        if run_migrations:
            conn = await asyncpg.connect(dsn)
            try:
                applied = await migrate(conn)
            finally:
                await conn.close()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        pool = await create_pool(dsn, min_size=settings.pool_min_size,
                                 max_size=settings.pool_max_size)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Database(dsn=dsn, pool=pool, embedded=embedded)


@dataclass
class App:
    settings: Settings
    database: Database
    server: grpc.aio.Server
    port: int
    runs: RunsService
    admin: AdminService
    health: health.HealthServicer
    monitor: InvariantMonitor
    probe: DatabaseProbe
    providers: Providers
    admin_pool: asyncpg.Pool
    flags: FlagStore
    _stopped: bool = field(default=False)
    v1: V1RunsService | None = None
    totals: TotalsService | None = None
    shadow: ShadowComparer | None = None
    shadow_pool: asyncpg.Pool | None = None
    totals_reconcile: DailyTotalsReconcile | None = None

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        await self.monitor.stop()
        if self.totals_reconcile is not None:
            await self.totals_reconcile.stop()
        await self.probe.stop()
        await self.server.stop(self.settings.grace_period if grace is None else grace)
        if self.shadow is not None:   # after the server: the last reads have submitted
            await self.shadow.stop()
        if self.shadow_pool is not None:
            await self.shadow_pool.close()
        await self.flags.stop()
        await self.admin_pool.close()
        await self.database.close()
        self.providers.shutdown()   # flushes the last spans and metrics


def _admin_token(settings: Settings, injected: bool) -> str:
    """The token when POTATO_ADMIN_TOKEN is unset: `<data-dir>/admin.token` on the
    embedded cluster (created, 0600, when missing); a random one nobody knows (the
    AdminService stays closed) for a caller-supplied database with a DSN."""
    from potato_runs.admin_token import load_or_create_token, token_path

    if settings.dsn is not None:
        assert injected   # refused at the top of build_app otherwise
        log.warning("no POTATO_ADMIN_TOKEN: the AdminService refuses every call")
        return secrets.token_urlsafe(32)
    try:
        token = load_or_create_token(settings.data_dir)
    except (OSError, EmbeddedPostgresError) as exc:
        raise StartupError(f"cannot use the admin token file {token_path(settings.data_dir)}: "
                           f"{exc}; set POTATO_ADMIN_TOKEN instead") from exc
    log.info("AdminService token: %s (or set POTATO_ADMIN_TOKEN)",
             token_path(settings.data_dir))
    return token


def _bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """server.add_insecure_port, or 0 when the address cannot be bound. A plain socket
    tries first (as gRPC binds: SO_REUSEADDR, no SO_REUSEPORT), so a busy port is
    refused without gRPC's own error log on stderr: `serve` prints one `error:` line."""
    if port != 0:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError):
            infos = []   # let gRPC resolve (and judge) the name
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError:
                    return 0
    try:
        return server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        return 0


async def build_app(settings: Settings, *, clock: Clock | None = None,
                    database: Database | None = None,
                    providers: Providers | None = None) -> App:
    """Builds and starts the gRPC server. Pass `database` to share one, and
    `providers` to observe telemetry in memory (tests)."""
    clock = clock or SystemClock()
    if settings.admin_token is None and settings.dsn is not None and database is None:
        raise StartupError(
            "POTATO_ADMIN_TOKEN is not set: with --dsn (or POTATO_DSN) the AdminService token "
            "must come from the environment; set POTATO_ADMIN_TOKEN to a random secret of 16+ "
            "characters (e.g. `openssl rand -hex 32`) and give the same value to the CLI")
    auth = AdminAuth(settings.admin_token.get_secret_value() if settings.admin_token else None)
    # Server interceptors, applied at registration to every method of our services
    # (health and reflection are never intercepted); the first listed runs first.
    interceptors: list[HandlerInterceptor] = [auth.intercept]
    providers = providers or build_providers(settings.otel_exporter,
                                             settings.otel_metric_interval)
    # so_reuseport off: a second server on a busy port must fail, not split traffic.
    server = grpc.aio.server(maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
                             options=[("grpc.so_reuseport", 0)])
    # Bind before the database opens: a busy port fails before any cluster is created.
    port = _bind(server, settings.host, settings.port)
    if port == 0:
        await server.stop(0)
        raise StartupError(f"could not bind {settings.host}:{settings.port} (the port is in "
                           f"use, or the host is not an address of this machine)")
    try:
        db = database or await open_database(settings)
    except BaseException:
        await server.stop(0)
        raise
    telemetry = Telemetry(providers.tracer(), providers.meter())
    runs_repo = RunsRepository(db.pool)
    # Operator work (rebuilds, full checks, the monitor) gets its own small pool, so
    # it can never take the connections that serve traffic.
    admin_pool = await create_pool(db.dsn, min_size=0, max_size=ADMIN_POOL_SIZE,
                                   command_timeout=600.0)
    admin_repo = AdminRepository(admin_pool)
    runs = RunsService(runs_repo, clock, telemetry)
    admin = AdminService(admin_repo, clock, telemetry)
    flag_store = FlagStore(db.dsn, db.pool, reload_interval=settings.flag_reload_interval)
    # Flags are read and changed on the serving pool, not the admin pool: a rollback
    # must never queue behind a long rebuild.
    flag_service = FlagService(FlagsRepository(db.pool), flag_store, clock)

    add_service(server, RunsServicer(runs, settings.default_timeout, settings.max_timeout),
                runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"], interceptors)
    # Shadow comparisons read on a pool of their own (one connection per worker): they
    # can never take the connections that answer callers.
    shadow_pool = await create_pool(db.dsn, min_size=0, max_size=settings.shadow_workers)
    shadow = ShadowComparer(ReadPaths(shadow_pool), ShadowRepository(shadow_pool), clock,
                            telemetry, ShadowSettings(
                                workers=settings.shadow_workers,
                                queue_size=settings.shadow_queue_size,
                                mismatch_cap=settings.shadow_mismatch_cap,
                                timeout=settings.default_timeout))
    v1 = V1RunsService(runs, ReadPaths(db.pool), flag_store, clock, shadow)   # ff.potato.runs_v2
    add_service(server, V1RunsServicer(v1, settings.default_timeout, settings.max_timeout),
                v1_runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"], interceptors)
    # ff.potato.totals_v2: computed on read, or the stored totals; shadow compares them.
    shadow.register(TOTALS_V2, ShadowPaths(TotalsReads(shadow_pool), TotalsSource.COMPUTED,
                                           TotalsSource.STORED, normalize_totals))
    totals = TotalsService(TotalsReads(db.pool), flag_store, clock, shadow)
    add_service(server, TotalsServicer(totals, settings.default_timeout, settings.max_timeout),
                totals_service_pb2.DESCRIPTOR.services_by_name["TotalsService"],
                interceptors)
    # Nightly totals reconciliation: on the admin pool, the day claimed by one replica.
    totals_repo = TotalsRepository(admin_pool)
    reconciler = TotalsReconciler(totals_repo, clock, telemetry)
    totals_reconcile = DailyTotalsReconcile(
        reconciler, totals_repo, clock, settings.totals_reconcile_at,
        f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        poll=settings.totals_reconcile_poll)
    add_service(server, AdminServicer(admin, settings.default_timeout, settings.max_timeout,
                                      flags=flag_service, totals=reconciler),
                admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"], interceptors)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE,
                 INVARIANTS_HEALTH):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def report(ok: bool | None, _count: int) -> None:
        status = (health_pb2.HealthCheckResponse.UNKNOWN if ok is None
                  else health_pb2.HealthCheckResponse.SERVING if ok
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        health_servicer.set(INVARIANTS_HEALTH, status)

    monitor = InvariantMonitor(admin, settings.invariant_check_interval, report)

    def serving(ok: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ok
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE):
            health_servicer.set(name, status)

    async def ping() -> bool:
        return await runs_repo.ping(Deadline.after(2.0))

    probe = DatabaseProbe(ping, settings.health_probe_interval, serving)
    reflection.enable_server_reflection(
        (RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME,
         reflection.SERVICE_NAME), server)
    try:
        if settings.admin_token is None:
            auth.token = _admin_token(settings, database is not None)
        await flag_store.start()   # the first load, before serving
        await server.start()
    except BaseException:
        await server.stop(0)
        await flag_store.stop()
        await admin_pool.close()
        await shadow_pool.close()
        if database is None:   # opened here: close it (and stop an embedded cluster)
            await db.close()
        raise
    monitor.start()
    probe.start()
    totals_reconcile.start()
    shadow.start()
    return App(settings=settings, database=db, server=server, port=port, runs=runs,
               admin=admin, health=health_servicer, monitor=monitor, probe=probe,
               providers=providers,
               admin_pool=admin_pool, flags=flag_store, v1=v1, totals=totals, shadow=shadow,
               shadow_pool=shadow_pool, totals_reconcile=totals_reconcile)
