"""Configuration: one frozen object, built from the environment and CLI flags.

Only the composition root (app.py) and the CLI read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from potato_runs.storage.embedded import default_data_dir


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    dsn: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    pool_min_size: int = 2
    pool_max_size: int = 16
    default_timeout: float = 5.0
    """Seconds a call may take when the client set no deadline."""
    max_timeout: float = 30.0
    """Cap on the deadline we honour from clients."""
    grace_period: float = 5.0
    max_concurrent_rpcs: int = 800
    """Calls beyond this many in flight get RESOURCE_EXHAUSTED (explicit load
    shedding) instead of being queued until gRPC cancels them."""
    health_probe_interval: float = 5.0
    """Seconds between database pings feeding the serving health status; 0 disables."""
    invariant_check_interval: float = 300.0
    """Seconds between background invariant checks feeding health; 0 disables."""
    log_level: str = "INFO"
    otel_exporter: str = "none"
    """OpenTelemetry exporter: none, console or otlp (see observability.py)."""
    otel_metric_interval: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        base = cls()
        values: dict[str, Any] = {}
        if env.get("POTATO_HOST"):
            values["host"] = env["POTATO_HOST"]
        if env.get("POTATO_PORT"):
            values["port"] = int(env["POTATO_PORT"])
        if env.get("POTATO_DSN"):
            values["dsn"] = env["POTATO_DSN"]
        if env.get("POTATO_DATA_DIR"):
            values["data_dir"] = Path(env["POTATO_DATA_DIR"])
        if env.get("POTATO_POOL_MAX_SIZE"):
            values["pool_max_size"] = int(env["POTATO_POOL_MAX_SIZE"])
        if env.get("POTATO_MAX_CONCURRENT_RPCS"):
            values["max_concurrent_rpcs"] = int(env["POTATO_MAX_CONCURRENT_RPCS"])
        if env.get("POTATO_HEALTH_PROBE_INTERVAL"):
            values["health_probe_interval"] = float(env["POTATO_HEALTH_PROBE_INTERVAL"])
        if env.get("POTATO_INVARIANT_CHECK_INTERVAL"):
            values["invariant_check_interval"] = float(env["POTATO_INVARIANT_CHECK_INTERVAL"])
        if env.get("POTATO_OTEL_EXPORTER"):
            values["otel_exporter"] = env["POTATO_OTEL_EXPORTER"]
        if env.get("POTATO_OTEL_METRIC_INTERVAL"):
            values["otel_metric_interval"] = float(env["POTATO_OTEL_METRIC_INTERVAL"])
        if env.get("POTATO_LOG_LEVEL"):
            values["log_level"] = env["POTATO_LOG_LEVEL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(base, **values)
