"""The event loop setting (POTATO_EVENT_LOOP) and the loop each choice runs on."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from potato_runs.config import Settings, event_loop_from_env
from potato_runs.event_loop import run


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default_and_asyncio_the_switch() -> None:
    assert event_loop_from_env({}) == "uvloop" == Settings.from_env({}).event_loop
    assert event_loop_from_env({"POTATO_EVENT_LOOP": " AsyncIO "}) == "asyncio"
    assert run(_loop_module(), "uvloop").startswith("uvloop")
    assert run(_loop_module(), "asyncio").startswith("asyncio")


def test_a_bad_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="POTATO_EVENT_LOOP"):
        event_loop_from_env({"POTATO_EVENT_LOOP": "trio"})
    with pytest.raises(ValueError, match="POTATO_EVENT_LOOP"):
        Settings.from_env({"POTATO_EVENT_LOOP": "trio"})


def test_the_cli_fails_with_an_error_line_on_a_bad_loop() -> None:
    done = subprocess.run([sys.executable, "-m", "potato_runs.cli", "migrate", "--dsn",
                           "postgresql://nobody@127.0.0.1:1/none"],
                          capture_output=True, text=True, timeout=60,
                          env={"POTATO_EVENT_LOOP": "trio", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 2, done
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and "POTATO_EVENT_LOOP" in first, done.stderr
