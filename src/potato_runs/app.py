"""The composition root: wires pool, repositories, services and servicers."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from potato.runs.v1 import runs_service_pb2 as v1_runs_service_pb2
from potato.runs.v2 import (
    admin_service_pb2,
    run_events_service_pb2,
    runs_service_pb2,
    totals_service_pb2,
)
from potato_runs.clock import Clock, SystemClock
from potato_runs.config import Settings
from potato_runs.deadline import Deadline
from potato_runs.domain.access_policy import PolicyError
from potato_runs.domain.flags import TOTALS_V2
from potato_runs.domain.totals_answers import TotalsSource
from potato_runs.domain.totals_answers import normalize as normalize_totals
from potato_runs.observability import Providers, build_providers, start_metrics_endpoint
from potato_runs.service.admin_service import AdminService
from potato_runs.service.blue_green import BlueGreenService
from potato_runs.service.database_probe import DatabaseProbe
from potato_runs.service.flags import FlagService, FlagStore
from potato_runs.service.invariant_monitor import Health, InvariantMonitor, InvariantStatus
from potato_runs.service.retention import RetentionPurge
from potato_runs.service.run_events import EventHub, RunEventsService
from potato_runs.service.runs_service import RunsService
from potato_runs.service.shadow import ShadowComparer, ShadowPaths, ShadowSettings
from potato_runs.service.telemetry import Telemetry
from potato_runs.service.totals_reconcile import DailyTotalsReconcile, TotalsReconciler
from potato_runs.service.totals_service import TotalsService
from potato_runs.service.v1_runs import V1RunsService
from potato_runs.storage.admin_repo import INVARIANT_QUERIES, AdminRepository
from potato_runs.storage.citus import distribute, is_distributed
from potato_runs.storage.db_call import observe, unobserve
from potato_runs.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError
from potato_runs.storage.flags_repo import FlagsRepository
from potato_runs.storage.health_ping import HealthPing
from potato_runs.storage.invariant_repo import InvariantChecksRepository
from potato_runs.storage.migrate import ensure_database, migrate, sync_grants
from potato_runs.storage.pool import create_pool, observe_wait, unobserve_wait
from potato_runs.storage.read_paths import ReadPaths
from potato_runs.storage.request_ids_repo import RequestIdsRepository
from potato_runs.storage.roles import OWNER_ROLE, ddl_powers, prepare_cluster
from potato_runs.storage.run_events_repo import (
    CitusEventTail,
    EventNotifier,
    EventTail,
    RunEventsRepository,
)
from potato_runs.storage.runs_repo import RunsRepository
from potato_runs.storage.shadow_repo import ShadowRepository
from potato_runs.storage.totals_reads import TotalsReads
from potato_runs.storage.totals_repo import TotalsRepository
from potato_runs.tracing import AsyncpgSpans, grpc_span_interceptor
from potato_runs.transport.access import AccessControl
from potato_runs.transport.admin_servicer import AdminServicer
from potato_runs.transport.registration import HandlerInterceptor, add_service
from potato_runs.transport.rpc_metrics import RpcMetrics
from potato_runs.transport.run_events_servicer import RunEventsServicer
from potato_runs.transport.runs_servicer import RunsServicer
from potato_runs.transport.shedding import LoadShedder
from potato_runs.transport.tls import ServerTls, TlsError, server_tls
from potato_runs.transport.totals_servicer import TotalsServicer
from potato_runs.transport.v1_servicer import V1RunsServicer

log = logging.getLogger(__name__)

RUNS_SERVICE = runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"].full_name
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
V1_RUNS_SERVICE = v1_runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"].full_name
TOTALS_SERVICE = totals_service_pb2.DESCRIPTOR.services_by_name["TotalsService"].full_name
RUN_EVENTS_SERVICE = run_events_service_pb2.DESCRIPTOR.services_by_name[
    "RunEventsService"].full_name
WATCH_RUN_EVENTS = f"/{RUN_EVENTS_SERVICE}/WatchRunEvents"
ADMIN_POOL_SIZE = 2
DRAIN_WAIT = 1.0
REQUEST_ID_PURGE_INTERVAL = 60.0
"""Seconds between purges of request ids past their retention (24 h by default)."""
RUN_EVENTS_PURGE_INTERVAL = 600.0
"""Seconds between purges of run events past their retention (30 days by default)."""
"""Most seconds a stopping server answers new calls UNAVAILABLE before gRPC's own stop."""
INVARIANTS_HEALTH = "potato.runs.v2.Invariants"
PING_TIMEOUT = 0.8
"""Seconds a health ping may take: a database that does not answer within it is down,
and health says so within a second."""
"""Health service name that turns NOT_SERVING while the invariant checker finds violations."""


class StartupError(RuntimeError):
    """The server could not start (e.g. it could not bind its address)."""


NO_ADMIN_TOKEN = (
    "POTATO_ADMIN_TOKEN is not set: with --dsn (or POTATO_DSN) the AdminService token "
    "must come from the environment; set POTATO_ADMIN_TOKEN to a random secret of 16+ "
    "characters (e.g. `openssl rand -hex 32`) and give the same value to the CLI")


@dataclass(frozen=True)
class Migrator:
    """Where migrations (DDL) run: the owner role's DSN (POTATO_MIGRATE_DSN, else
    POTATO_DSN), or on the embedded cluster its superuser acting as the owner role
    (`role`, through SET ROLE: the owner needs no password of its own)."""

    dsn: str
    role: str | None = None

    async def connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn)
        if self.role is not None:
            try:
                await conn.execute(f"SET ROLE {self.role}")
            except BaseException:
                await conn.close()
                raise
        return conn

    async def run(self, *, citus: bool = False, shard_count: int | None = None) -> list[str]:
        """Applies the pending migrations (and the grants of potato_app) on a connection
        of its own: no pool command_timeout (migrate() bounds its statements), and
        closing it ends any session lock. Then, with `citus` or on a schema distributed
        already, distributes what is not yet (storage/citus.py): a table or function of a
        later migration is distributed by the same `migrate`."""
        conn = await self.connect()
        try:
            applied = await migrate(conn)
            if citus or await is_distributed(conn):
                applied += await distribute(conn, shard_count=shard_count)
                await migrate(conn)   # potato_app's grants on what distribute() made
            return applied
        finally:
            await conn.close()


@dataclass
class Database:
    dsn: str
    """What the server's connections use (on the embedded cluster: potato_app)."""
    pool: asyncpg.Pool
    embedded: EmbeddedPostgres | None = None
    migrator: Migrator | None = None
    citus: bool = False
    """Whether the schema is distributed on Citus (storage/citus.py)."""

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
    if dsn is None and settings.migrate_dsn is not None:
        raise StartupError("POTATO_MIGRATE_DSN (--migrate-dsn) goes with POTATO_DSN (--dsn); "
                           "the embedded cluster migrates as its own owner role")
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        await asyncio.to_thread(embedded.start, create=create_cluster)
        migrator = Migrator(embedded.dsn(), role=OWNER_ROLE)
    else:
        migrator = (Migrator(settings.migrate_dsn, role=settings.migrate_role)
                    if settings.migrate_dsn else Migrator(dsn))
    try:
        if embedded is not None:
            if create_cluster:
                await ensure_database(embedded.dsn("postgres"), "potato")
            dsn = await _prepare_embedded(embedded, grant=not run_migrations)
        if run_migrations:
            applied = await migrator.run()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        assert dsn is not None
        pool = await create_pool(dsn, min_size=settings.pool_min_size,
                                 max_size=settings.pool_max_size)
        try:
            async with pool.acquire(timeout=settings.default_timeout) as conn:
                citus = await is_distributed(conn)
        except BaseException:
            await pool.close()
            raise
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Database(dsn=dsn, pool=pool, embedded=embedded, migrator=migrator, citus=citus)


async def _prepare_embedded(embedded: EmbeddedPostgres, *, grant: bool) -> str:
    """The embedded cluster's roles (created, or a cluster from before them upgraded:
    storage/roles.py), as its superuser; returns potato_app's DSN, the one every server
    connection uses. `grant`: when no migration runs next (operator commands), the
    grants migrate() would give potato_app, as the owner role."""
    password = await asyncio.to_thread(embedded.app_password)
    conn = await asyncpg.connect(embedded.dsn())
    try:
        await prepare_cluster(conn, app_password=password)
        if grant:
            await conn.execute(f"SET ROLE {OWNER_ROLE}")
            await sync_grants(conn)
    finally:
        await conn.close()
    return embedded.app_dsn()


async def _warn_if_ddl(pool: asyncpg.Pool) -> None:
    """`serve --dsn` with a role that could change the schema still serves, but says so:
    one SQL injection away from DROP TABLE (docs/security.md#database-roles)."""
    try:
        async with pool.acquire() as conn:
            role = await conn.fetchval("SELECT current_user")
            powers = await ddl_powers(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("could not check the serving role's privileges: %s", exc)
        return
    if powers:
        log.warning("the serving role %s can change the schema (%s): serve with POTATO_DSN "
                    "of a role with DML only (potato_app) and POTATO_MIGRATE_DSN of the owner "
                    "role; see docs/security.md#database-roles", role, ", ".join(powers))


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
    request_id_purge: RetentionPurge | None = None
    tls: ServerTls | None = None
    access: AccessControl | None = None
    shedder: LoadShedder | None = None
    run_events: RunEventsService | None = None
    event_notifier: EventNotifier | None = None
    run_events_purge: RetentionPurge | None = None
    asyncpg_spans: AsyncpgSpans | None = None

    def reload(self) -> None:
        """What SIGHUP does: reads the TLS certificate, key and client CA again (new
        connections use them, open ones are kept; a bad file keeps the old ones and
        logs one error). Without TLS there is nothing to reload. It also reads the access
        policy file again (a broken one keeps the policy in force and logs one error)."""
        policy = self.access is not None and self.access.policy_path is not None
        if policy:
            assert self.access is not None
            self.access.reload()
        if self.tls is None:
            if not policy:
                log.info("reload: nothing to reload (no TLS configured)")
            return
        self.tls.reload()

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        grace = self.settings.grace_period if grace is None else grace
        started = asyncio.get_running_loop().time()
        if self.shedder is not None:
            # New calls get UNAVAILABLE (retry elsewhere) while those in flight finish;
            # gRPC's stop below would cancel the calls it received but had not handed
            # to a handler (transport/shedding.py).
            # Bounded well inside the grace period: under steady traffic calls keep
            # arriving (and are refused), and the calls in flight get the rest of it.
            self.shedder.drain()
            if self.run_events is not None:   # streams end now (SERVER_DRAINING), not at
                await self.run_events.stop()   # the grace period's end: clients resume
            await self.shedder.quiesce(min(grace, DRAIN_WAIT))
        await self.monitor.stop()
        if self.totals_reconcile is not None:
            await self.totals_reconcile.stop()
        if self.request_id_purge is not None:
            await self.request_id_purge.stop()
        if self.run_events_purge is not None:
            await self.run_events_purge.stop()
        if self.run_events is not None:
            await self.run_events.stop()
        await self.probe.stop()   # and closes its ping session
        for pool in (self.database.pool, self.admin_pool, self.shadow_pool):
            if pool is not None:
                unobserve(pool)
                unobserve_wait(pool)
        await self.server.stop(max(grace - (asyncio.get_running_loop().time() - started), 0.0))
        if self.event_notifier is not None:   # after the server: no write pokes it now
            await self.event_notifier.stop()
        if self.shadow is not None:   # after the server: the last reads have submitted
            await self.shadow.stop()
        if self.shadow_pool is not None:
            await self.shadow_pool.close()
        await self.flags.stop()
        await self.admin_pool.close()
        await self.database.close()
        if self.asyncpg_spans is not None:
            self.asyncpg_spans.stop()
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


def connections_per_worker(settings: Settings) -> int:
    """Most PostgreSQL sessions one server process opens: its serving, admin and shadow
    pools, and three sessions of its own (health ping, run-events and flags LISTEN). A
    `serve --workers N` group opens N times as many."""
    return settings.pool_max_size + ADMIN_POOL_SIZE + settings.shadow_workers + 3


async def prepare_group(settings: Settings) -> tuple[Settings, EmbeddedPostgres | None]:
    """What the supervisor of `serve --workers N` does once, before its workers start:
    open the database (starting the embedded cluster when no DSN is given), migrate it,
    resolve the admin token, and warn when N workers could open more sessions than
    PostgreSQL allows. Returns the settings every worker builds its app from (the serving
    DSN and the admin token filled in) and the embedded cluster to stop at the end."""
    if settings.admin_token is None and settings.dsn is not None:
        raise StartupError(NO_ADMIN_TOKEN)
    db = await open_database(settings)
    try:
        if db.embedded is None:
            await _warn_if_ddl(db.pool)
        token = (settings.admin_token.get_secret_value() if settings.admin_token is not None
                 else _admin_token(settings, False))
        async with db.pool.acquire() as conn:
            allowed = int(await conn.fetchval(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"))
        need = settings.workers * connections_per_worker(settings)
        if need > allowed:
            log.warning("%d workers may open %d PostgreSQL sessions (%d each: "
                        "POTATO_POOL_MAX_SIZE %d + admin %d + POTATO_SHADOW_WORKERS %d + 3) but "
                        "the server allows %d; lower --workers or POTATO_POOL_MAX_SIZE, or raise "
                        "max_connections", settings.workers, need,
                        connections_per_worker(settings), settings.pool_max_size,
                        ADMIN_POOL_SIZE, settings.shadow_workers, allowed)
        await db.pool.close()   # the supervisor serves nothing: no sessions of its own
    except BaseException:
        await db.close()
        raise
    # The workers get the owner connection the supervisor has (the embedded cluster's
    # superuser acting as potato_owner, or --migrate-dsn): the blue/green rebuild needs
    # it. They never migrate (build_app: run_migrations=False in a group).
    owner = db.migrator
    return settings.model_copy(update={
        "dsn": db.dsn, "migrate_dsn": owner.dsn if owner is not None else None,
        "migrate_role": owner.role if owner is not None else None,
        "admin_token": SecretStr(token)}), db.embedded


def _bind(server: grpc.aio.Server, host: str, port: int,
          credentials: grpc.ServerCredentials | None = None, *, check: bool = True) -> int:
    """server.add_insecure_port (add_secure_port with credentials: TLS), or 0 when the
    address cannot be bound. A plain socket
    tries first (as gRPC binds: SO_REUSEADDR, no SO_REUSEPORT), so a busy port is
    refused without gRPC's own error log on stderr: `serve` prints one `error:` line.
    check=False (a worker of a group): the supervisor checked the port and holds it."""
    if port != 0 and check:
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
        if credentials is not None:
            return server.add_secure_port(f"{host}:{port}", credentials)
        return server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        return 0


def _providers(settings: Settings) -> Providers:
    """The exporters the settings ask for, and the Prometheus endpoint (`metrics_port`) when
    set, bound now so a busy port fails before anything else starts."""
    endpoint = None
    if settings.metrics_port is not None:
        port = settings.metrics_port
        if port and settings.worker_index:   # worker i of a group: port + i (0: a free one)
            port += settings.worker_index
        endpoint = start_metrics_endpoint(settings.metrics_host or settings.host, port)
    try:
        return build_providers(settings.otel_exporter, settings.otel_metric_interval,
                               metrics_endpoint=endpoint)
    except BaseException:
        if endpoint is not None:
            endpoint.close()
        raise


def _close_metrics(providers: Providers) -> None:
    """Frees the metrics port when the server does not start."""
    if providers.metrics_endpoint is not None:
        providers.metrics_endpoint.close()


async def build_app(settings: Settings, *, clock: Clock | None = None,
                    database: Database | None = None,
                    providers: Providers | None = None) -> App:
    """Builds and starts the gRPC server. Pass `database` to share one, and
    `providers` to observe telemetry in memory (tests)."""
    clock = clock or SystemClock()
    if settings.admin_token is None and settings.dsn is not None and database is None:
        raise StartupError(NO_ADMIN_TOKEN)
    try:   # the TLS files are read and checked before anything starts
        tls = server_tls(settings)
    except TlsError as exc:
        raise StartupError(str(exc)) from exc
    try:   # the access policy is read and checked before anything starts
        access = AccessControl(
            settings.admin_token.get_secret_value() if settings.admin_token else None,
            settings.auth_policy)
    except PolicyError as exc:
        raise StartupError(str(exc)) from exc
    # Server interceptors, applied at registration to every method of our services
    # (health and reflection are never intercepted); the first listed runs first.
    # Load shedding: calls beyond max_concurrent_rpcs in flight in our services get
    # RESOURCE_EXHAUSTED at once, with a retry pushback (transport/shedding.py).
    # Run event streams last for hours: not calls in flight, bounded on their own.
    shedder = LoadShedder(settings.max_concurrent_rpcs,
                          streams={WATCH_RUN_EVENTS: settings.max_watchers})
    interceptors: list[HandlerInterceptor] = [access.intercept, shedder.intercept]
    providers = providers or _providers(settings)
    # rpc.server.duration (transport/rpc_metrics.py) runs first, so it also times the calls
    # the two above refuse; only with an SDK meter provider (nothing to record otherwise).
    if providers.meter_provider is not None:
        interceptors.insert(0, RpcMetrics(providers.meter(), skip={WATCH_RUN_EVENTS}).intercept)
    # RPC spans (opt-in, tracing.py): the library's grpc.aio ServerInterceptor.
    server_interceptors = ([grpc_span_interceptor(providers.tracer_provider)]
                           if settings.otel_grpc_spans else None)
    asyncpg_spans = (AsyncpgSpans(providers.tracer_provider) if settings.otel_asyncpg_spans
                     else None)
    # so_reuseport off: a second server on a busy port must fail, not split traffic. On
    # in the workers of a group (`serve --workers N`): they share the port the supervisor
    # checked and holds (cli/workers.py).
    # No `maximum_concurrent_rpcs`: gRPC's own limit counts health checks too (probes
    # were refused under load) and answered its excess calls slowly, a third of them
    # CANCELLED without trailers (scripts/bench_overload.py); the shedder above is the
    # limit, and health, reflection and RollbackFlag are never refused.
    group = settings.worker_index is not None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if group else 0)],
                             interceptors=server_interceptors)
    # Bind before the database opens: a busy port fails before any cluster is created.
    port = _bind(server, settings.host, settings.port,
                 tls.credentials() if tls is not None else None, check=not group)
    if port == 0:
        await server.stop(0)
        _close_metrics(providers)
        raise StartupError(f"could not bind {settings.host}:{settings.port} (the port is in "
                           f"use, or the host is not an address of this machine)")
    try:
        # A group's supervisor migrated once (prepare_group) before its workers started.
        db = database or await open_database(settings, run_migrations=not group)
    except BaseException:
        await server.stop(0)
        _close_metrics(providers)
        raise
    if database is None and db.embedded is None and not group:   # a group's supervisor did
        await _warn_if_ddl(db.pool)
    telemetry = Telemetry(providers.tracer(), providers.meter(),
                          tracing=providers.tracer_provider is not None)
    # Listeners of the run event stream are woken after this replica's writes commit,
    # never from inside the write transaction (storage/run_events_repo.EventNotifier).
    event_notifier = EventNotifier(db.pool)
    runs_repo = RunsRepository(db.pool, written=event_notifier.poke)
    # Operator work (rebuilds, full checks, the monitor) gets its own small pool, so
    # it can never take the connections that serve traffic.
    admin_pool = await create_pool(db.dsn, min_size=0, max_size=ADMIN_POOL_SIZE,
                                   command_timeout=600.0)
    admin_repo = AdminRepository(admin_pool)
    runs = RunsService(runs_repo, clock, telemetry)
    admin = AdminService(admin_repo, clock, telemetry)
    flag_store = FlagStore(db.dsn, db.pool, reload_interval=settings.flag_reload_interval,
                           telemetry=telemetry)
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
    v1 = V1RunsService(runs, ReadPaths(db.pool), flag_store, clock, shadow,   # ff.potato.runs_v2
                       telemetry)
    add_service(server, V1RunsServicer(v1, settings.default_timeout, settings.max_timeout),
                v1_runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"], interceptors)
    # ff.potato.totals_v2: computed on read, or the stored totals; shadow compares them.
    shadow.register(TOTALS_V2, ShadowPaths(TotalsReads(shadow_pool), TotalsSource.COMPUTED,
                                           TotalsSource.STORED, normalize_totals))
    totals = TotalsService(TotalsReads(db.pool), flag_store, clock, shadow, telemetry)
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
    # AIP-155 request ids past their retention: purged on the admin pool, in every replica.
    request_id_purge = RetentionPurge(
        "request-id-purge", "request ids", RequestIdsRepository(admin_pool).purge_batch,
        clock, settings.request_id_retention, REQUEST_ID_PURGE_INTERVAL)
    # The blue/green rebuild runs DDL: on the owner (migrate) connection, never potato_app.
    blue_green = BlueGreenService(db.migrator.connect if db.migrator else None, clock)
    add_service(server, AdminServicer(admin, settings.default_timeout, settings.max_timeout,
                                      flags=flag_service, totals=reconciler,
                                      blue_green=blue_green),
                admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"], interceptors)
    # The run event stream (service/run_events.py): replay on the serving pool, one
    # LISTEN connection of its own for live events; the retention on the admin pool.
    async def connect_tail(on_notify: Callable[[], None], on_lost: Callable[[], None]
                           ) -> EventTail:
        tail = CitusEventTail if db.citus else EventTail
        return await tail.connect(db.dsn, on_notify, on_lost, timeout=5.0)

    run_events = RunEventsService(RunEventsRepository(db.pool), EventHub(connect_tail),
                                  queue_size=settings.watcher_queue_size)
    add_service(server, RunEventsServicer(run_events),
                run_events_service_pb2.DESCRIPTOR.services_by_name["RunEventsService"],
                interceptors)
    events_admin = RunEventsRepository(admin_pool)

    async def purge_events(older_than: dt.datetime, limit: int, deadline: Deadline) -> int:
        return await events_admin.purge_batch(older_than, limit, clock.now(), deadline)

    run_events_purge = RetentionPurge(
        "run-events-purge", "run events", purge_events, clock,
        settings.run_events_retention, RUN_EVENTS_PURGE_INTERVAL, max_batches=100)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE,
                 RUN_EVENTS_SERVICE, INVARIANTS_HEALTH):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def report(result: InvariantStatus) -> None:
        status = {Health.SERVING: health_pb2.HealthCheckResponse.SERVING,
                  Health.NOT_SERVING: health_pb2.HealthCheckResponse.NOT_SERVING,
                  Health.UNKNOWN: health_pb2.HealthCheckResponse.UNKNOWN}[result.health]
        health_servicer.set(INVARIANTS_HEALTH, status)
        if result.record is not None and result.record.error is None:
            # Every replica exports the stored result's open violations per invariant.
            telemetry.record_violations({code: result.violations.get(code, 0)
                                         for code in INVARIANT_QUERIES})

    # In every replica: one pass at a time runs (a lock), every replica reports the
    # latest stored result (service/invariant_monitor.py), on the admin pool. In a group
    # only worker 0 runs passes; every worker reports, so health agrees across them.
    monitor = InvariantMonitor(
        InvariantChecksRepository(admin_pool), clock,
        interval=settings.invariant_check_interval,
        full_interval=settings.invariant_full_check_interval, report=report,
        replica=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        run_passes=settings.background_jobs)

    def serving(ok: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ok
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE,
                     RUN_EVENTS_SERVICE):
            health_servicer.set(name, status)

    # Health follows the database within a second: calls report their outcome
    # (db_call.observe, below), the probe pings on a session of its own.
    health_ping = HealthPing(db.dsn)

    async def ping() -> bool:
        return await health_ping(PING_TIMEOUT)

    probe = DatabaseProbe(ping, settings.health_probe_interval, serving,
                          close=health_ping.close)
    reflection.enable_server_reflection(
        (RUNS_SERVICE, V1_RUNS_SERVICE, TOTALS_SERVICE, ADMIN_SERVICE, RUN_EVENTS_SERVICE,
         health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if settings.admin_token is None:
            try:
                access.admin_token = _admin_token(settings, database is not None)
            except PolicyError as exc:   # a policy identity holds the admin token's hash
                raise StartupError(str(exc)) from exc
        await flag_store.start()   # the first load, before serving
        if asyncpg_spans is not None:
            asyncpg_spans.start()
        await server.start()
    except BaseException:
        if asyncpg_spans is not None:
            asyncpg_spans.stop()
        await server.stop(0)
        await flag_store.stop()
        await admin_pool.close()
        await shadow_pool.close()
        if database is None:   # opened here: close it (and stop an embedded cluster)
            await db.close()
        _close_metrics(providers)
        raise
    monitor.start()
    for name, pool in (("serving", db.pool), ("admin", admin_pool), ("shadow", shadow_pool)):
        observe(pool, probe)
        observe_wait(pool, telemetry.observe_pool(name, pool))   # potato.db.pool.*
    probe.start()
    if settings.background_jobs:   # a lone server, or worker 0 of a group
        totals_reconcile.start()
        request_id_purge.start()
        run_events_purge.start()
    shadow.start()
    return App(settings=settings, database=db, server=server, port=port, runs=runs,
               admin=admin, health=health_servicer, monitor=monitor, probe=probe,
               providers=providers,
               admin_pool=admin_pool, flags=flag_store, v1=v1, totals=totals, shadow=shadow,
               shadow_pool=shadow_pool, totals_reconcile=totals_reconcile,
               request_id_purge=request_id_purge, tls=tls,
               run_events=run_events, run_events_purge=run_events_purge,
               event_notifier=event_notifier,
               access=access, shedder=shedder, asyncpg_spans=asyncpg_spans)
