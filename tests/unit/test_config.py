"""Settings: defaults, then the environment, then CLI overrides; bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from potato_runs.config import Settings


def test_environment_then_overrides() -> None:
    env = {"POTATO_PORT": "6000", "POTATO_DSN": "postgresql://x@h/db", "POTATO_LOG_LEVEL": "debug",
           "POTATO_DATA_DIR": "/var/tmp/p", "POTATO_INVARIANT_CHECK_INTERVAL": "0"}
    s = Settings.from_env(env, port=7000, host=None)
    assert (s.port, s.dsn, s.log_level, s.data_dir) == (7000, "postgresql://x@h/db", "DEBUG",
                                                        Path("/var/tmp/p"))
    assert s.invariant_check_interval == 0 and s.host == "127.0.0.1"


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.port, s.dsn, s.otel_exporter, s.max_concurrent_rpcs) == (50051, None, "none", 800)


@pytest.mark.parametrize(("env", "named"), [
    ({"POTATO_PORT": "http"}, "POTATO_PORT"),
    ({"POTATO_PORT": "65536"}, "POTATO_PORT"),
    ({"POTATO_HEALTH_PROBE_INTERVAL": "-1"}, "POTATO_HEALTH_PROBE_INTERVAL"),
    ({"POTATO_OTEL_EXPORTER": "zipkin"}, "POTATO_OTEL_EXPORTER"),
    ({"POTATO_LOG_LEVEL": "chatty"}, "POTATO_LOG_LEVEL"),
    ({"POTATO_MAX_CONCURRENT_RPCS": "0"}, "POTATO_MAX_CONCURRENT_RPCS"),
])
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]
