"""`serve --workers N`: the pieces of the supervisor that need no process (settings on the
pipe, the restart policy, the port it holds, the worker log field)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
from pathlib import Path

import pytest

from potato_runs import logs
from potato_runs.cli._common import CliError
from potato_runs.cli.workers import RestartPolicy, decode_settings, encode_settings, hold_port
from potato_runs.config import Settings


def test_settings_cross_the_pipe_unchanged_secrets_included() -> None:
    env = {"POTATO_ADMIN_TOKEN": "token-0123456789abcdef", "POTATO_TOTALS_RECONCILE_AT": "03:30",
           "POTATO_DATA_DIR": "/var/tmp/p", "POTATO_DSN": "postgresql://u:pw@h:5/db",
           "POTATO_METRICS_PORT": "9100", "POTATO_LOG_FORMAT": "json", "POTATO_WORKERS": "3",
           "POTATO_REQUEST_ID_RETENTION": "12.5"}
    for settings in (Settings.from_env(env, tls_cert=Path("/c.pem"), tls_key=Path("/k.pem")),
                     Settings.from_env({"POTATO_TOTALS_RECONCILE_AT": ""}), Settings()):
        decoded = decode_settings(encode_settings(settings), 1)
        assert decoded.worker_index == 1 and not decoded.background_jobs
        assert decoded.model_copy(update={"worker_index": None}) == settings
        assert (decoded.admin_token.get_secret_value() if decoded.admin_token else None) == (
            settings.admin_token.get_secret_value() if settings.admin_token else None)
    assert decode_settings(encode_settings(Settings()), 0).background_jobs
    assert Settings().background_jobs and Settings().totals_reconcile_at == dt.time(4, 0)


def test_workers_auto_is_one_per_usable_core() -> None:
    assert Settings.from_env({"POTATO_WORKERS": "auto"}).workers == len(os.sched_getaffinity(0))
    assert Settings.from_env({}, workers="AUTO").workers == len(os.sched_getaffinity(0))
    assert Settings.from_env({"POTATO_WORKERS": "4"}).workers == 4
    assert Settings.from_env({}).workers == 1
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="POTATO_WORKERS"):
            Settings.from_env({"POTATO_WORKERS": bad})


def test_restarts_back_off_and_the_fifth_death_within_a_minute_is_a_crash_loop() -> None:
    policy = RestartPolicy()
    assert [policy.died(t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.died(59.0) is None
    calm = RestartPolicy()
    assert [calm.died(t) for t in (0.0, 61.0, 122.0, 183.0, 244.0)] == [0.5] * 5
    capped = RestartPolicy(limit=100)
    assert max(capped.died(float(t)) or 0 for t in range(20)) == capped.cap


def test_the_held_port_refuses_other_servers_and_gets_no_connections() -> None:
    held, port = hold_port("127.0.0.1", 0)
    try:
        assert port != 0 and len(held) == 1
        for reuseaddr in (0, 1):   # a server without SO_REUSEPORT (a lone `serve`) is refused
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
                with pytest.raises(OSError):
                    other.bind(("127.0.0.1", port))
        with pytest.raises(CliError):   # nor does a second group
            hold_port("127.0.0.1", port)
        # Nothing listens yet: a bound socket that does not listen takes no connection.
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
    finally:
        for sock in held:
            sock.close()


def test_a_port_another_server_listens_on_is_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(CliError, match=f"could not bind 127.0.0.1:{port} "):
            hold_port("127.0.0.1", port)


def test_worker_logs_carry_the_worker_index() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json", worker=3)
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("potato_runs.test").info("hello")
        entry = json.loads(stream.getvalue())
        assert (entry["worker"], entry["message"]) == (3, "hello")
        logs.configure("INFO", "text", worker=1)
        root.handlers[0].setStream(stream := io.StringIO())  # type: ignore[attr-defined]
        logging.getLogger("potato_runs.test").info("hello")
        assert "[worker 1] potato_runs.test: hello" in stream.getvalue()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
