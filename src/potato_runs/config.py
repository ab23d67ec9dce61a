"""Configuration: one frozen, validated object, built from the environment and CLI flags.

Only the composition root (app.py) and the CLI read it. pydantic coerces the
environment's strings and refuses bad values (a port outside 0..65535, a negative
interval, an unknown exporter) with a ValueError that names the setting.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from potato_runs.storage.embedded import default_data_dir

ENV_VARS: dict[str, str] = {
    "POTATO_HOST": "host",
    "POTATO_PORT": "port",
    "POTATO_DSN": "dsn",
    "POTATO_DATA_DIR": "data_dir",
    "POTATO_POOL_MAX_SIZE": "pool_max_size",
    "POTATO_MAX_CONCURRENT_RPCS": "max_concurrent_rpcs",
    "POTATO_HEALTH_PROBE_INTERVAL": "health_probe_interval",
    "POTATO_INVARIANT_CHECK_INTERVAL": "invariant_check_interval",
    "POTATO_INVARIANT_FULL_CHECK_INTERVAL": "invariant_full_check_interval",
    "POTATO_OTEL_EXPORTER": "otel_exporter",
    "POTATO_OTEL_METRIC_INTERVAL": "otel_metric_interval",
    "POTATO_METRICS_PORT": "metrics_port",
    "POTATO_METRICS_HOST": "metrics_host",
    "POTATO_OTEL_GRPC_SPANS": "otel_grpc_spans",
    "POTATO_OTEL_ASYNCPG_SPANS": "otel_asyncpg_spans",
    "POTATO_LOG_FORMAT": "log_format",
    "POTATO_LOG_LEVEL": "log_level",
    "POTATO_SHADOW_WORKERS": "shadow_workers",
    "POTATO_SHADOW_QUEUE_SIZE": "shadow_queue_size",
    "POTATO_SHADOW_MISMATCH_CAP": "shadow_mismatch_cap",
    "POTATO_ADMIN_TOKEN": "admin_token",
    "POTATO_FLAG_RELOAD_INTERVAL": "flag_reload_interval",
    "POTATO_TOTALS_RECONCILE_AT": "totals_reconcile_at",
    "POTATO_TLS_CERT": "tls_cert",
    "POTATO_TLS_KEY": "tls_key",
    "POTATO_TLS_CLIENT_CA": "tls_client_ca",
    "POTATO_AUTH_POLICY": "auth_policy",
    "POTATO_MIGRATE_DSN": "migrate_dsn",
    "POTATO_REQUEST_ID_RETENTION": "request_id_retention",
    "POTATO_MAX_WATCHERS": "max_watchers",
    "POTATO_WATCHER_QUEUE_SIZE": "watcher_queue_size",
    "POTATO_RUN_EVENTS_RETENTION": "run_events_retention",
    "POTATO_WORKERS": "workers",
    "POTATO_EVENT_LOOP": "event_loop",
}
"""Environment variable -> setting."""
EventLoop = Literal["uvloop", "asyncio"]
"""The event loops a command may run on (event_loop.py)."""
EMPTY_MEANS_OFF = frozenset({"POTATO_TOTALS_RECONCILE_AT"})
"""Variables whose empty value is a value (it disables the feature), not "unset"."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=50051, ge=0, le=65535)
    dsn: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    pool_min_size: int = Field(default=2, ge=0)
    pool_max_size: int = Field(default=16, ge=1)
    default_timeout: float = Field(default=5.0, gt=0)
    """Seconds a call may take when the client set no deadline."""
    max_timeout: float = Field(default=30.0, gt=0)
    """Cap on the deadline we honour from clients."""
    grace_period: float = Field(default=5.0, ge=0)
    max_concurrent_rpcs: int = Field(default=800, ge=1)
    """Calls beyond this many in flight get RESOURCE_EXHAUSTED (explicit load
    shedding) instead of being queued until gRPC cancels them."""
    health_probe_interval: float = Field(default=5.0, ge=0)
    """Seconds between database pings feeding the serving health status; 0 disables."""
    invariant_check_interval: float = Field(default=300.0, ge=0)
    """Seconds between incremental invariant passes (the users touched since an earlier
    pass) feeding health; 0 disables the monitor in this replica."""
    invariant_full_check_interval: float = Field(default=21_600.0, gt=0)
    """Seconds between full invariant passes (everyone); one replica runs each pass."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    """OpenTelemetry exporter (see observability.py)."""
    otel_metric_interval: float = Field(default=60.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus endpoint `/metrics` (0 picks a free one, logged); None: off."""
    metrics_host: str | None = Field(default=None, min_length=1)
    """Address of the Prometheus endpoint; None: the gRPC `host`."""
    otel_grpc_spans: bool = False
    """RPC server spans (opentelemetry-instrumentation-grpc's aio interceptor): opt-in,
    a grpc.aio ServerInterceptor costs every call (tracing.py, scripts/bench_telemetry.py)."""
    otel_asyncpg_spans: bool = False
    """A span per SQL statement (opentelemetry-instrumentation-asyncpg): opt-in (tracing.py)."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """Server logs: JSON lines, text, or auto (text on a terminal, JSON elsewhere; logs.py)."""
    event_loop: EventLoop = "uvloop"
    """The asyncio event loop every command runs on (event_loop.py): uvloop (libuv), or
    the standard library's. uvloop is a dependency; `asyncio` is the fallback switch."""
    shadow_workers: int = Field(default=4, ge=1, le=64)
    """Concurrent online shadow comparisons (each may hold one connection of its own pool)."""
    shadow_queue_size: int = Field(default=1000, ge=1)
    """Comparisons waiting for a worker; beyond that they are dropped and counted."""
    shadow_mismatch_cap: int = Field(default=10_000, ge=1)
    """Most rows kept in shadow_mismatches (the oldest beyond it are deleted)."""
    admin_token: SecretStr | None = None
    """The AdminService bearer token (printable ASCII, no spaces, 16+ characters).
    Secret: never logged nor shown (SecretStr). Unset on the embedded default, serve
    keeps one in <data-dir>/admin.token; with a DSN it is required."""
    flag_reload_interval: float = Field(default=5.0, gt=0)
    """Seconds between full reloads of the feature flags (LISTEN/NOTIFY is the fast path)."""
    totals_reconcile_at: dt.time | None = dt.time(4, 0)
    """UTC time of day of the nightly totals reconciliation (one replica runs it);
    None (an empty POTATO_TOTALS_RECONCILE_AT) disables it."""
    totals_reconcile_poll: float = Field(default=30.0, gt=0)
    """Seconds between the scheduler's looks at the clock (tests make it short)."""
    tls_cert: Path | None = None
    """PEM server certificate chain; with tls_key the server speaks only TLS."""
    tls_key: Path | None = None
    """PEM private key of tls_cert."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: with it, clients must present a certificate signed by it (mTLS)."""
    auth_policy: Path | None = None
    """YAML access policy (identities -> roles, per method); None keeps the default:
    RunsService and TotalsService open, AdminService behind the admin token."""
    migrate_dsn: str | None = None
    """DSN of the owner role that runs migrations (DDL); the serving pool uses `dsn`."""
    request_id_retention: float = Field(default=86_400.0, gt=0)
    """Seconds a write's request_id (AIP-155) is remembered for idempotent retries."""
    max_watchers: int = Field(default=64, ge=1)
    """Run event streams (WatchRunEvents) open at once; beyond it RESOURCE_EXHAUSTED
    (TOO_MANY_WATCHERS). Not counted in max_concurrent_rpcs."""
    watcher_queue_size: int = Field(default=1000, ge=1)
    """Live events queued for one stream whose client is not reading; one more and the
    stream ends with RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW)."""
    run_events_retention: float = Field(default=2_592_000.0, gt=0)
    """Seconds run_events are kept (30 days); older ones are purged, and a cursor older
    than what is kept gets FAILED_PRECONDITION (CURSOR_EXPIRED)."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Server processes of `serve` (`auto`: one per core this process may run on). 1: one
    process, no supervisor; N > 1: a supervisor and N workers sharing the port
    (SO_REUSEPORT, cli/workers.py)."""
    worker_index: int | None = Field(default=None, ge=0)
    """Set by the supervisor only: this process is worker i of a `serve --workers N` group.
    It binds with SO_REUSEPORT, does not migrate (the supervisor did), and runs the
    background jobs only when it is worker 0 (`background_jobs`). None: a lone server."""

    migrate_role: str | None = None
    """Set by the supervisor only: the role a connection to `migrate_dsn` acts as (SET
    ROLE), so a group's workers reach the owner role the way a lone server on the
    embedded cluster does (its superuser acting as potato_owner; the blue/green rebuild).
    None: the migrate DSN's own role."""

    @field_validator("totals_reconcile_at", mode="before")
    @classmethod
    def _daily_time(cls, value: Any) -> Any:
        return parse_daily_time(value) if isinstance(value, str) else value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        """`auto` -> the cores this process may run on (its CPU affinity)."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return len(os.sched_getaffinity(0))
        return value

    @property
    def background_jobs(self) -> bool:
        """Whether this process runs the periodic jobs (invariant passes, totals
        reconciliation, retention purges): a lone server, or worker 0 of a group."""
        return self.worker_index in (None, 0)

    @field_validator("admin_token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        """Printable ASCII without spaces (it travels in a header), 16 to 512 characters.
        The message never repeats the token."""
        if value is None:
            return None
        token = value.get_secret_value()
        if not 16 <= len(token) <= 512 or not all("!" <= c <= "~" for c in token):
            raise ValueError("must be 16 to 512 printable ASCII characters without spaces")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the environment, then explicit overrides (CLI flags; None = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {name: env[var] for var, name in ENV_VARS.items()
                                  if env.get(var) or (var in EMPTY_MEANS_OFF and var in env)}
        if "log_level" in values:
            values["log_level"] = str(values["log_level"]).upper()
        if "log_format" in values:
            values["log_format"] = str(values["log_format"]).lower()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_name(err['loc'])}: {err['msg']}" for err in exc.errors())
            raise ValueError(problems) from None


def event_loop_from_env(env: Mapping[str, str] | None = None) -> str:
    """POTATO_EVENT_LOOP alone, for the loop that must exist before the rest of the
    settings are read; a bad value is the same ValueError as from_env's."""
    env = os.environ if env is None else env
    value = (env.get("POTATO_EVENT_LOOP") or "uvloop").strip().lower()
    if value not in get_args(EventLoop):
        raise ValueError("event_loop (POTATO_EVENT_LOOP): must be one of "
                         + ", ".join(get_args(EventLoop)))
    return value


def parse_daily_time(value: str) -> dt.time | None:
    """UTC `HH:MM` (00:00..23:59) -> a time; empty -> None (disabled)."""
    text = value.strip()
    if not text:
        return None
    hh, sep, mm = text.partition(":")
    if (not sep or len(hh) != 2 or len(mm) != 2 or not (hh + mm).isascii()
            or not (hh + mm).isdigit() or int(hh) > 23 or int(mm) > 59):
        raise ValueError("must be a UTC time HH:MM such as 04:00, or empty to disable")
    return dt.time(int(hh), int(mm))


def _name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    env = next((var for var, name in ENV_VARS.items() if name == field), None)
    return f"{field} ({env})" if env else field
