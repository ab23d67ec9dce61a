"""`serve --workers N`: one supervisor and N server processes sharing one port.

Python serves from one core per process. With N > 1, `serve` runs `serve_group`, the
supervisor, which

1. holds the port: it binds HOST:PORT with SO_REUSEPORT (not SO_REUSEADDR) and never
   listens on that socket, for the whole life of the group. A bind by anything that does
   not also set SO_REUSEPORT as the same user fails (a second `serve` gets its one
   `error:` line), and a bound socket that does not listen gets no connections: the
   kernel spreads them over the workers' listening sockets only. Port 0 picks a free port
   here, and every worker binds that one.
2. prepares the database once (app.prepare_group): the embedded cluster started when no
   DSN is given, the migrations run, the admin token resolved.
3. starts N workers, fresh interpreters (`python -m potato_runs.cli.workers`, never a fork
   of a process that imported gRPC). Each builds the app as a lone server does, with
   `worker_index` set: it binds the port with SO_REUSEPORT, does not migrate, and only
   worker 0 runs the background jobs (Settings.background_jobs).
4. prints `potato-runs serving on HOST:PORT (N workers, ...)` once every worker serves.
5. restarts a worker that dies, after a bounded backoff (RestartPolicy); the fifth death
   of one worker within 60 s is a crash loop: the group stops, exit 1.
6. forwards SIGTERM and SIGINT as SIGTERM (each worker drains as a lone server does),
   waits up to the grace period plus STOP_MARGIN, kills what is left, stops the embedded
   cluster it started and exits 0; SIGHUP is forwarded (TLS and access policy reload).

A worker dies with its supervisor (PR_SET_PDEATHSIG: SIGTERM, so it drains): a killed
supervisor leaves no worker behind. Workers run in their own process group, so a
Ctrl-C at a terminal reaches the supervisor only, which stops them in order.

The worker protocol: argv `--worker I --supervisor PID`; stdin, one JSON line: the
settings (secrets included; a pipe between the two processes only); stdout, lines:
`potato-runs-worker: {"ready": {...}}` once it serves, or `... {"error": "..."}` when
it cannot start (other lines are copied to the supervisor's stdout); stderr: its logs
(the supervisor's stderr; each line carries `worker`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from potato_runs import logs
from potato_runs.cli._common import CliError, _describe, _error, _run
from potato_runs.config import Settings

log = logging.getLogger("potato_runs.supervisor")

WORKER_MODULE = "potato_runs.cli.workers"
STOP_MARGIN = 10.0
"""Seconds a stopping worker gets beyond the grace period (its pools and cluster
sessions close after the drain) before the supervisor kills it."""
PR_SET_PDEATHSIG = 1
MARK = "potato-runs-worker: "
"""What starts a message of a worker on its stdout; any other line (a console exporter's
spans) is copied to the supervisor's stdout."""


@dataclass
class RestartPolicy:
    """When a dead worker comes back: after `first` seconds, doubling with each death
    within `window` seconds, at most `cap`; the `limit`-th death within `window` is a
    crash loop (None)."""

    limit: int = 5
    window: float = 60.0
    first: float = 0.5
    cap: float = 8.0
    _deaths: deque[float] = field(default_factory=deque)

    def died(self, now: float) -> float | None:
        self._deaths.append(now)
        while self._deaths and self._deaths[0] <= now - self.window:
            self._deaths.popleft()
        if len(self._deaths) >= self.limit:
            return None
        return min(self.first * 2.0 ** (len(self._deaths) - 1), self.cap)


# --------------------------------------------------------------------- settings on a pipe
def encode_settings(settings: Settings) -> bytes:
    """The settings as one JSON line a worker decodes back to the same Settings."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    token = settings.admin_token
    data["admin_token"] = token.get_secret_value() if token is not None else None
    at = settings.totals_reconcile_at
    data["totals_reconcile_at"] = at.strftime("%H:%M") if at is not None else ""
    return json.dumps(data).encode() + b"\n"


def decode_settings(line: bytes, index: int) -> Settings:
    return Settings.model_validate({**json.loads(line), "worker_index": index})


# --------------------------------------------------------------------------- the port
def hold_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Checks that nothing is bound on host:port (every address `host` resolves to) with
    an exclusive bind (SO_REUSEADDR, as a lone server binds, no SO_REUSEPORT: it fails
    on any socket there, another group's included), then binds it with SO_REUSEPORT and
    without SO_REUSEADDR, never listening; returns these sockets and the port (port 0:
    the first address picks a free one, the others take the same). CliError when busy."""
    busy = CliError(f"could not bind {host}:{port} (the port is in use, or the host is not "
                    f"an address of this machine)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise busy from exc
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
                (i[0], i[1], i[2], "", i[4]) for i in infos):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address[0], port, *address[2:]))
                port = probe.getsockname()[1]
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address[0], port, *address[2:]))
    except OSError as exc:
        for sock in held:
            sock.close()
        raise busy from exc
    return held, port


# --------------------------------------------------------------------------- a worker
def _die_with_supervisor(supervisor: int) -> None:
    """SIGTERM (a graceful drain) when the supervisor dies, however it dies (Linux
    PR_SET_PDEATHSIG); if it is gone already, exit now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError) as exc:
        logging.getLogger("potato_runs.worker").warning(
            "this worker will not stop if its supervisor is killed (PR_SET_PDEATHSIG: %s)",
            exc)
    if os.getppid() != supervisor:
        raise SystemExit(0)


def _say(**message: Any) -> None:
    """One message to the supervisor: a line of stdout, MARK and JSON."""
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve_worker(settings: Settings) -> None:
    from potato_runs.app import App, build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[App] = []

    def reload() -> None:   # SIGHUP: the TLS files and the access policy
        for running in started:
            running.reload()

    loop.add_signal_handler(signal.SIGHUP, reload)
    application = await build_app(settings)
    started.append(application)
    endpoint = application.providers.metrics_endpoint
    _say(ready={"port": application.port, "metrics": None if endpoint is None
                else f"http://{endpoint.host}:{endpoint.port}/metrics"})
    logging.getLogger("potato_runs.worker").info(
        "worker %s serving on %s:%d (pid %d, background jobs %s)", settings.worker_index,
        settings.host, application.port, os.getpid(),
        "on" if settings.background_jobs else "off (worker 0 runs them)")
    try:
        await stop.wait()
    finally:
        await application.stop()


def worker_main(argv: list[str]) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # until the app can reload
    os.setpgid(0, 0)   # a process group of its own: a Ctrl-C reaches the supervisor only
    ap = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}",
                                 description="A worker of `potato-runs serve --workers N`")
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--supervisor", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_supervisor(args.supervisor)
    settings = decode_settings(sys.stdin.buffer.readline(), args.worker)
    logs.configure(settings.log_level, settings.log_format, worker=args.worker)
    try:
        _run(_serve_worker(settings))
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        _say(error=message)
        return 2
    return 0


# ----------------------------------------------------------------------- the supervisor
@dataclass
class _Worker:
    index: int
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    metrics: str | None = None


class _Failed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _death(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, settings: Settings, count: int, where: str) -> None:
        self.settings = settings   # what every worker builds its app from
        self.where = where
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = asyncio.Event()
        self.up = False
        self.failure: _Failed | None = None
        self._line = encode_settings(settings)

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE, "--worker", str(worker.index),
            "--supervisor", str(os.getpid()), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"})
        assert proc.stdin is not None
        proc.stdin.write(self._line)
        await proc.stdin.drain()
        proc.stdin.close()
        return proc

    async def _run_once(self, worker: _Worker) -> tuple[int, str | None]:
        """Runs one worker process to its end: (exit code, its startup error if any)."""
        worker.proc = proc = await self._spawn(worker)
        if self.stopping.is_set():   # the group stopped while it was being started
            proc.terminate()
        assert proc.stdout is not None
        error = None
        async for raw in proc.stdout:
            if not raw.startswith(MARK.encode()):
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()
                continue
            message = json.loads(raw[len(MARK):])
            if "ready" in message:
                worker.ready = True
                worker.metrics = message["ready"].get("metrics")
                if self.up:
                    log.info("worker %d (pid %d) serves again", worker.index, proc.pid)
                elif all(w.ready for w in self.workers):
                    self.up = True
                    self._announce()
            elif "error" in message:
                error = str(message["error"])
        code = await proc.wait()
        worker.ready = False
        return code, error

    async def _keep(self, worker: _Worker) -> None:
        """Keeps one worker running until the group stops."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            code, error = await self._run_once(worker)
            if self.stopping.is_set():
                return
            assert worker.proc is not None
            how = f"worker {worker.index} (pid {worker.proc.pid}) {_death(code)}" + (
                f": {error}" if error else "")
            if not self.up:   # it never served: nothing to restart into
                self._fail(error or f"{how} before it served (its log is above)",
                           2 if error else 1)
                return
            delay = worker.policy.died(loop.time())
            if delay is None:
                self._fail(f"{how}; it died {worker.policy.limit} times within "
                           f"{worker.policy.window:.0f} s (a crash loop): stopping the group", 1)
                return
            log.warning("%s; restarting it in %.1f s", how, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _fail(self, message: str, code: int) -> None:
        if self.failure is None:
            self.failure = _Failed(message, code)
        self.stopping.set()

    def _announce(self) -> None:
        s = self.settings
        pids = " ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
        print(f"potato-runs serving on {s.host}:{s.port} ({len(self.workers)} workers, "
              f"pids {pids}; {self.where})", flush=True)
        for w in self.workers:
            if w.metrics is not None:
                print(f"potato-runs metrics on {w.metrics} (worker {w.index})", flush=True)

    def send(self, sig: int) -> None:
        """Sends `sig` to every worker that serves (SIGHUP: one still starting reads the
        files anyway)."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None and (
                    w.ready or sig != signal.SIGHUP):
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def run(self) -> None:
        """Starts the workers and keeps them until `stopping`; then stops them (SIGTERM,
        then SIGKILL past the grace period). Raises _Failed when the group could not
        start or crash-looped."""
        tasks = [asyncio.create_task(self._keep(w), name=f"worker-{w.index}")
                 for w in self.workers]

        def ended(task: asyncio.Task[None]) -> None:   # a bug here must not hang the group
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("supervising %s failed", task.get_name(), exc_info=exc)
                self._fail(f"supervising {task.get_name()} failed: {exc}", 1)

        for task in tasks:
            task.add_done_callback(ended)
        try:
            await self.stopping.wait()
        finally:
            if self.up and self.failure is None:
                print("potato-runs shutting down", flush=True)
            self.send(signal.SIGTERM)
            _, pending = await asyncio.wait(
                tasks, timeout=self.settings.grace_period + STOP_MARGIN)
            if pending:
                for w in self.workers:
                    if w.proc is not None and w.proc.returncode is None:
                        log.warning("worker %d (pid %d) did not stop within %.0f s: killing it",
                                    w.index, w.proc.pid, self.settings.grace_period + STOP_MARGIN)
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.kill()
                await asyncio.wait(tasks)
            log.info("all %d workers stopped", len(self.workers))
        if self.failure is not None:
            raise self.failure


async def serve_group(settings: Settings) -> int:
    """The supervisor of `serve --workers N` (N = settings.workers > 1); the exit code."""
    from potato_runs.app import prepare_group

    count = settings.workers
    if settings.metrics_port and settings.metrics_port + count - 1 > 65535:
        raise CliError(f"--metrics-port {settings.metrics_port} + {count - 1}: worker i serves "
                       f"/metrics on that port + i, past 65535; choose a lower port")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervisor: list[Supervisor] = []

    def stopped() -> None:
        stop.set()
        for s in supervisor:
            s.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped)

    def reload() -> None:
        for s in supervisor:
            s.send(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    held, port = hold_port(settings.host, settings.port)
    embedded = None
    try:
        worker_settings, embedded = await prepare_group(
            settings.model_copy(update={"port": port}))
        if stop.is_set():
            return 0
        group = Supervisor(worker_settings, count,
                           "PostgreSQL at the given DSN" if embedded is None
                           else f"embedded PostgreSQL in {settings.data_dir}")
        supervisor.append(group)
        log.info("starting %d workers on %s:%d (pid %d supervises them)", count,
                 settings.host, port, os.getpid())
        try:
            await group.run()
        except _Failed as failed:
            _error(str(failed))
            return failed.code
        return 0
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        for sock in held:   # last: the port stays ours until no worker is left
            sock.close()


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
